"""Map-style dataset over an image folder (with optional sidecar ``.txt`` captions)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .shards import find_images
from .transforms import BadImage, ImageTransform, decode_image

log = logging.getLogger(__name__)


class ImageFolder(Dataset):
    """Images under ``root`` (recursively); an unreadable file is replaced by the next readable one.

    Args:
        root: folder of images.
        transform: crop/flip; its randomness is seeded by ``(seed, index, epoch)``.
        captions: return ``caption`` from ``NAME.txt`` beside ``NAME.jpg`` ("" when absent).
    """

    def __init__(self, root: str, transform: ImageTransform | None = None, captions: bool = False,
                 seed: int = 0) -> None:
        self.paths = find_images(root)
        if not self.paths:
            raise FileNotFoundError(f"no images found under {root}")
        self.transform = transform or ImageTransform(mode="center")
        self.captions = captions
        self.seed = seed
        self.epoch = 0
        self.skipped_bad = 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                image = decode_image(path.read_bytes())
            except BadImage as error:
                self.skipped_bad += 1
                log.warning("skipped bad image %s (%s); %d skipped so far", path, error, self.skipped_bad)
                continue
            rng = np.random.default_rng([self.seed, self.epoch, index])
            sample: dict[str, Any] = {"image": self.transform(image, rng), "key": path.stem}
            if self.captions:
                caption = path.with_suffix(".txt")
                sample["caption"] = caption.read_text().strip() if caption.exists() else ""
            return sample
        raise RuntimeError(f"no readable image under {Path(self.paths[0]).parent}")
