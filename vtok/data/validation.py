"""Validation data without Lightning: building a dataset from its config, and batching its samples.

The trainer's data module and ``python -m vtok.eval`` both read validation images through these functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from vtok.distributed import rank_and_world_size, rank_share


class RankShare(IterableDataset):
    """This rank's share of a map-style dataset: items ``rank, rank + world, ...``, each once.

    Iterable on purpose: the share of a rank may be empty (fewer images than ranks), and a loader of unknown length
    keeps Lightning from skipping that rank's validation loop, which every rank must run to meet the others.
    """

    def __init__(self, dataset: Dataset, rank: int, world: int) -> None:
        super().__init__()
        self.dataset, self.rank, self.world = dataset, rank, world

    def __iter__(self) -> Iterator[Any]:
        assert isinstance(self.dataset, Sized)
        for index in rank_share(len(self.dataset), self.rank, self.world):
            yield self.dataset[index]


def collate_same_size(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack sample dicts into a batch (``image``: ``(B, 3, H, W)``), or say why images of different sizes
    cannot share one (whole-image evaluation of photos of different sizes).

    Samples the dataset could not use arrive as ``{"skipped": kind, "key"}``: they are left out and counted in
    ``batch["skipped"]`` (``{kind: count}``); a batch of only such samples has ``image`` of shape ``(0, 3, 1, 1)``.
    """
    skipped: dict[str, int] = {}
    for sample in samples:
        if "skipped" in sample:
            skipped[sample["skipped"]] = skipped.get(sample["skipped"], 0) + 1
    samples = [sample for sample in samples if "skipped" not in sample]
    if not samples:
        return {"image": torch.zeros(0, 3, 1, 1), "key": [], "skipped": skipped}
    shapes = sorted({tuple(sample["image"].shape) for sample in samples})
    if len(shapes) > 1:
        raise ValueError(f"validation images of different sizes in one batch ({shapes[0]} and {shapes[-1]}): "
                         "whole images (data.val_crop=full) go one at a time, set "
                         "data.val_batch_size=1")
    batch = default_collate(samples)
    batch["skipped"] = skipped
    return batch


def build_dataset(source: Any) -> Dataset:
    """A dataset, or a zero-argument factory of one (Hydra's ``_partial_: true`` configs), -> the dataset."""
    return source() if callable(source) and not isinstance(source, Dataset) else source


def validation_loader(dataset: Dataset, batch_size: int = 1, num_workers: int = 1) -> DataLoader:
    """One pass over this rank's share of ``dataset`` in order, batched by :func:`collate_same_size` (at most one
    worker: order and counts stay those of the dataset). Under several ranks a map-style set is split by
    :class:`RankShare` (each image on one rank, no padding); iterable sets (shards) split themselves by rank."""
    rank, world = rank_and_world_size()
    if world > 1 and not isinstance(dataset, IterableDataset):
        dataset = RankShare(dataset, rank, world)
    return DataLoader(dataset, batch_size=batch_size, num_workers=min(num_workers, 1), collate_fn=collate_same_size)
