"""Where this data stream runs: node rank and data-loader worker, read at iteration time."""

from __future__ import annotations

import os

import torch.distributed as dist
from torch.utils.data import get_worker_info


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else from ``RANK``/``WORLD_SIZE``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def worker_and_count() -> tuple[int, int]:
    """``(worker_id, num_workers)`` inside a ``DataLoader`` worker, ``(0, 1)`` in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)
