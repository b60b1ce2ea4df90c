"""Helpers that keep codebook state identical on every rank (no-ops outside ``torch.distributed``)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Copy rank ``src``'s ``tensor`` to every rank in place and return it."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def gather_rows(rows: Tensor) -> Tensor:
    """``(n, d)`` rows from each rank -> ``(world * n, d)`` rows (all ranks must pass the same ``n``)."""
    if not is_distributed():
        return rows
    out = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(out, rows.contiguous())
    return torch.cat(out)


def mean_over_ranks(local_mean: Tensor, local_count: int) -> Tensor:
    """Mean over all ranks' samples, given this rank's mean of ``local_count`` samples; differentiable.

    Gradients flow back to every rank's contribution (``torch.distributed.nn`` all-reduce).
    """
    if not is_distributed():
        return local_mean
    from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

    counts = torch.tensor([float(local_count)], device=local_mean.device)
    dist.all_reduce(counts)
    return differentiable_all_reduce(local_mean * local_count) / counts
