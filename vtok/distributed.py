"""Everything vtok asks of ``torch.distributed``, in one place; every helper is a no-op in a single process.

Quantizers keep their codebooks identical across ranks with :func:`all_reduce_sum`, :func:`broadcast` and
:func:`mean_over_ranks`; data streams split work with :func:`rank_and_world_size` and :func:`worker_and_count`;
evaluation gathers per-image values with :func:`gather_list`; contrastive losses gather negatives with
:func:`gather_with_grad`; ``trainer=fsdp`` shards blocks with :func:`fully_shard` and handles the shards with
:func:`is_sharded`, :func:`whole` and :func:`shard_like`; training starts its group with
:func:`join_process_group` (a rendezvous limit apart from the collectives' one), ``python -m vtok.eval`` under
``torchrun`` with :func:`process_group`. No other module of vtok calls ``torch.distributed`` (``tests/test_layers.py``).

Ranks may see different numbers of validation batches (a shard split by rank, a set not divisible by the world
size), so per-batch work runs under :func:`local_only`: the quantizers' synchronising helpers become no-ops there,
and the ranks meet once, in a gather every rank calls exactly once, whatever its batch count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import get_worker_info

_local_depth = 0


def is_distributed() -> bool:
    """Whether a process group of more than one rank is running (and this is not a :func:`local_only` block)."""
    return not _local_depth and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def local_only() -> Iterator[None]:
    """Within the block, :func:`all_reduce_sum`, :func:`broadcast`, :func:`mean_over_ranks` and
    :func:`gather_list` act on this rank alone: for per-batch evaluation, where ranks' batch counts differ and a
    collective inside a batch would wait forever for ranks that have no such batch."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def rank_share(count: int, rank: int | None = None, world: int | None = None) -> range:
    """Positions ``0..count-1`` that ``rank`` of ``world`` handles: every ``world``-th, from ``rank``. Each position
    goes to exactly one rank and none is repeated (unlike ``DistributedSampler``, which pads with repeats)."""
    if rank is None or world is None:
        rank, world = rank_and_world_size()
    return range(rank, count, world)


def rank() -> int:
    """This process's rank in the running group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Ranks in the running group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` when initialised, else from ``RANK``/``WORLD_SIZE``
    (data-loader workers and launchers that set the variables before the group starts)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def worker_and_count() -> tuple[int, int]:
    """``(worker_id, num_workers)`` inside a ``DataLoader`` worker, ``(0, 1)`` in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


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


def barrier() -> None:
    """Wait until every rank arrives (after one rank wrote a file the others read)."""
    if is_distributed():
        dist.barrier()


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


def gather_list(values: list[Any]) -> list[Any]:
    """Concatenate a list of picklable values over ranks, in rank order; the list itself in one process."""
    if not is_distributed():
        return list(values)
    gathered: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(gathered, list(values))
    return [v for part in gathered for v in part]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """``(B, ...)`` on every rank -> ``(world * B, ...)`` in rank order, differentiable: gradients flow back to each
    rank's own rows (``torch.distributed.nn``); the tensor itself in one process."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()))


def join_process_group(backend: str, rank: int, world: int, address: str, port: int, timeout: timedelta,
                       rendezvous_timeout: timedelta, device: torch.device | None = None) -> None:
    """Start the default process group in two steps, so slow starts and stalled collectives have separate limits.

    ``init_process_group`` alone bounds both the wait for every rank to arrive (nodes and ranks may start minutes
    apart: scheduling, imports, a cold filesystem) and every later collective with one ``timeout``. Here the ranks
    first meet at a TCP store that waits ``rendezvous_timeout`` for all ``world`` of them; only then is the group
    made, with ``timeout`` for its collectives. ``device``: the rank's GPU for NCCL (``None`` on CPUs).
    """
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    store = dist.TCPStore(address, port, world, is_master=rank == 0, timeout=rendezvous_timeout,
                          wait_for_workers=True)
    store.add("vtok/arrived", 1)
    deadline = time.monotonic() + rendezvous_timeout.total_seconds()
    while (arrived := int(store.add("vtok/arrived", 0))) < world:  # every rank waits for all, however late
        if time.monotonic() > deadline:
            raise TimeoutError(f"{arrived} of {world} ranks arrived within the rendezvous timeout of "
                               f"{rendezvous_timeout.total_seconds():.0f} s")
        time.sleep(0.05)
    store.set_timeout(timeout)
    kwargs = {"device_id": device} if device is not None and device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout, **kwargs)


@contextmanager
def process_group(backend: str, timeout_s: float) -> Iterator[bool]:
    """Start the process group a launcher (``torchrun``) describes, for the block, when there is more than one rank
    and none is running yet; yields whether it started one (and then ends it)."""
    start = int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized()
    if start:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield start
    finally:
        if start:
            dist.destroy_process_group()


# ------------------------------------------------------------------------------- sharded tensors (FSDP2)
def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a shard of a larger one (a ``DTensor``, as FSDP2 makes parameters)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def whole(tensor: Tensor) -> Tensor:
    """The full tensor a shard belongs to (a collective: every rank calls it); other tensors as they are."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(value: Tensor, like: Tensor) -> Tensor:
    """``value`` (whole) split over ranks the way the sharded ``like`` is; ``value`` itself when ``like`` is whole."""
    if not is_sharded(like):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.detach().to(like.device), like.device_mesh, like.placements)


def fully_shard(module: torch.nn.Module, mesh: Any) -> None:
    """Shard ``module``'s parameters over ``mesh`` with FSDP2 (each rank keeps ``1 / world``)."""
    from torch.distributed.fsdp import fully_shard as fsdp_fully_shard

    fsdp_fully_shard(module, mesh=mesh)
