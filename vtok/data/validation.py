"""Validation data without Lightning: building a dataset from its config, and batching its samples.

The trainer's data module and ``python -m vtok.eval`` both read validation images through these functions.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset, default_collate


def collate_same_size(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack sample dicts into a batch (``image``: ``(B, 3, H, W)``), or say why images of different sizes
    cannot share one (whole-image evaluation of photos of different sizes)."""
    shapes = sorted({tuple(sample["image"].shape) for sample in samples})
    if len(shapes) > 1:
        raise ValueError(f"validation images of different sizes in one batch ({shapes[0]} and {shapes[-1]}): "
                         "whole images (data.val_crop=full) go one at a time, set "
                         "data.val_batch_size=1")
    return default_collate(samples)


def build_dataset(source: Any) -> Dataset:
    """A dataset, or a zero-argument factory of one (Hydra's ``_partial_: true`` configs), -> the dataset."""
    return source() if callable(source) and not isinstance(source, Dataset) else source


def validation_loader(dataset: Dataset, batch_size: int = 1, num_workers: int = 1) -> DataLoader:
    """One pass over ``dataset`` in order, batched by :func:`collate_same_size` (at most one worker: order
    and counts stay those of the dataset)."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=min(num_workers, 1), collate_fn=collate_same_size)
