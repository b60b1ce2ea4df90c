"""Lightning data module: an endless, resumable training stream and a finite validation set."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vtok.distributed import gather_list, rank

from .stream import RandomSampleStream, ResumableStream
from .validation import build_dataset, validation_loader

log = logging.getLogger(__name__)


class TokenizerDataModule(L.LightningDataModule):
    """Wraps any training and validation datasets that yield dicts with an ``image`` entry.

    Args:
        train: a dataset or a zero-argument factory (built in ``setup``, after ``prepare`` has run). A
            map-style dataset is sampled endlessly by :class:`RandomSampleStream`; an iterable one
            (e.g. :class:`~vtok.data.ShardDataset`) must be endless or long enough for ``max_steps``.
        val: a dataset or factory for validation (and evaluation, by default); ``None`` for none.
        test: a dataset or factory for evaluation only (``eval.split=test``): images no choice was made on.
        batch_size: training batch per device.
        val_batch_size: validation batch per device (1 lets images of different sizes through).
        num_workers: data-loader worker processes.
        prepare: called once on the main process before ``setup`` (e.g. to write sample shards).
        seed: seed of the training stream for map-style datasets.
        image_size: training resolution, recorded for the model config and reports.
        val_crop: how validation images are cut (``center``, ``full``, or a paper's protocol: ``adm``,
            ``resize_bicubic``, ``resize_bilinear``); the validation transform reads it
            from the config, and reports record it.
        hf: ``data=hf``'s shared settings (``data.hf.*``), read by its ``train`` and ``val`` entries; unused here.
        depth: ``data=depth``'s shared settings (``data.depth.*``), read the same way (and by the evaluation).
    """

    def __init__(
        self,
        train: Dataset | Callable[[], Dataset],
        val: Dataset | Callable[[], Dataset] | None = None,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 2,
        prepare: Callable[[], Any] | None = None,
        seed: int = 0,
        image_size: int | None = None,
        val_crop: str = "center",
        test: Dataset | Callable[[], Dataset] | None = None,
        hf: Any = None,
        depth: Any = None,
    ) -> None:
        super().__init__()
        self.image_size, self.val_crop = image_size, val_crop
        self._train, self._val, self._test, self._prepare = train, val, test, prepare
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.train_set: IterableDataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._resume_batches = 0
        self._resume_positions: dict[int, int] | None = None
        self._positions: dict[int, int] = {}  # stream worker -> last raw position delivered in a trained batch

    def prepare_data(self) -> None:
        if self._prepare is not None:
            self._prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            train = build_dataset(self._train)
            self.train_set = train if isinstance(train, IterableDataset) else RandomSampleStream(train, self.seed)
        if self.val_set is None and self._val is not None:
            self.val_set = build_dataset(self._val)
        if self.test_set is None and self._test is not None and stage in (None, "test"):
            self.test_set = build_dataset(self._test)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        if isinstance(self.train_set, ResumableStream):
            self.train_set.resume_after(self._resume_batches, self.batch_size, self._resume_positions)
        return DataLoader(self.train_set, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return validation_loader(self.val_set, self.val_batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        """The test images, as validation reads its own (``setup("test")`` first)."""
        if self.test_set is None:
            raise ValueError("eval.split=test, but the data config has no test set (data.test): add eval.split=val")
        return validation_loader(self.test_set, self.val_batch_size, self.num_workers)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called for the batch about to be trained (after any prefetching), so the record matches the step count.
        if self.trainer is not None and self.trainer.training and "stream_worker" in batch:
            self._positions[int(batch["stream_worker"][0])] = int(batch["stream_position"].max())
        return batch

    def state_dict(self) -> dict[str, Any]:
        # One optimiser step per batch, so the global step is the number of batches this rank consumed. Streams that
        # skip unreadable samples resume from the raw positions instead (exact whatever was skipped).
        # Every rank calls this when a checkpoint is saved; the file is rank 0's, so it holds every rank's positions.
        positions = gather_list([dict(self._positions)])
        return {"batches": self.trainer.global_step if self.trainer is not None else 0,
                "workers": max(self.num_workers, 1), "positions": dict(enumerate(positions))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_batches = int(state.get("batches", 0))
        saved = state.get("positions", {})
        self._positions = {int(k): int(v) for k, v in saved.get(rank(), {}).items()}
        exact = state.get("workers") == max(self.num_workers, 1) and rank() in saved
        self._resume_positions = dict(self._positions) if exact and self._positions else None
        if any(saved.values()) and not exact:
            self._positions = {}
            log.warning("resuming with %d data workers on rank %d of a checkpoint written with %s workers and %d "
                        "ranks: the data stream restarts by batch count, not exactly where it stopped",
                        max(self.num_workers, 1), rank(), state.get("workers"), len(saved))
