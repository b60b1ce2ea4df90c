"""Endless random sampling from a map-style dataset, reproducible by position (so resume can skip exactly)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import Dataset, IterableDataset

from vtok.distributed import rank_and_world_size, worker_and_count


@runtime_checkable
class EpochAware(Protocol):
    """A dataset whose items' random augmentation depends on an epoch (or position) it is told."""

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class ResumableStream(Protocol):
    """An endless training stream that can start after the batches a resumed run already consumed.

    ``positions`` (optional) maps each stream worker to the last raw stream position it had delivered in a consumed
    batch (samples carry ``stream_worker`` and ``stream_position``): exact even when the stream skipped samples
    (unreadable images), where counting ``batches x batch_size`` would fall short.
    """

    def resume_after(self, batches: int, batch_size: int, positions: dict[int, int] | None = None) -> None: ...


def stream_worker(consumed_batches: int) -> tuple[int, int]:
    """``(stream_worker, workers)`` of this data-loader worker when ``consumed_batches`` were already taken.

    A ``DataLoader`` takes batches from its workers in turn, starting with worker 0, so an uninterrupted run's
    batch ``n`` comes from worker ``n % W``. A resumed loader starts again at worker 0; giving loader worker ``w``
    the stream of worker ``(w + n) % W`` makes the resumed batches come in the uninterrupted order.
    """
    worker, workers = worker_and_count()
    return (worker + consumed_batches) % workers, workers


def consumed_before(stream: int, workers: int, batches: int) -> int:
    """Batches that stream worker ``stream`` of ``workers`` had produced when ``batches`` were consumed."""
    return max(0, -(-(batches - stream) // workers))


class RandomSampleStream(IterableDataset):
    """Yields ``dataset[i]`` for indices drawn with replacement, different on every rank and worker.

    Index ``n`` of worker ``w`` on rank ``r`` is drawn from a generator seeded by ``(seed, r, w, n)``, so the
    stream can be resumed at any position without replaying it.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        super().__init__()
        self.dataset, self.seed = dataset, seed
        self.skip_batches, self.batch_size = 0, 1

    def resume_after(self, batches: int, batch_size: int, positions: dict[int, int] | None = None) -> None:
        """Start after ``batches`` batches of ``batch_size`` already consumed on this rank (every position yields
        one sample here, so ``positions`` adds nothing)."""
        self.skip_batches, self.batch_size = batches, batch_size

    def __iter__(self) -> Iterator[Any]:
        rank, _ = rank_and_world_size()
        worker, workers = stream_worker(self.skip_batches)
        position = consumed_before(worker, workers, self.skip_batches) * self.batch_size
        while True:
            position += 1
            index = int(np.random.default_rng([self.seed, rank, worker, position]).integers(len(self.dataset)))
            if isinstance(self.dataset, EpochAware):
                self.dataset.set_epoch(position)  # varies the item's own augmentation draw
            yield self.dataset[index]
