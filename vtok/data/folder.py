"""Map-style dataset over an image folder (with optional sidecar ``.txt`` captions)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .decode import BadImage
from .shards import find_images
from .transforms import ImageTransform

log = logging.getLogger(__name__)


class ImageFolder(Dataset):
    """Images under ``root`` (recursively).

    Args:
        root: folder of images.
        transform: crop/flip; its randomness is seeded by ``(seed, index, epoch)``.
        captions: return ``caption`` from ``NAME.txt`` beside ``NAME.jpg`` ("" when absent; bytes that are not UTF-8
            are replaced and counted).
        substitute_bad: an unusable file (:class:`~vtok.data.transforms.BadImage`) is replaced by the next usable
            one (training); ``False`` returns ``{"skipped": kind, "key"}`` instead, which evaluation counts.
    """

    def __init__(self, root: str, transform: ImageTransform | None = None, captions: bool = False,
                 seed: int = 0, substitute_bad: bool = True) -> None:
        self.paths = find_images(root)
        if not self.paths:
            raise FileNotFoundError(f"no images found under {root}")
        self.transform = transform or ImageTransform(mode="center")
        self.captions = captions
        self.seed = seed
        self.epoch = 0
        self.substitute_bad = substitute_bad
        self.counts: Counter[str] = Counter()  # unusable files (each once) and caption problems, by kind
        self.bad: dict[Path, str] = {}  # unusable file -> its kind

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            if path in self.bad and self.substitute_bad:  # known unusable: counted once, not read again
                continue
            rng = np.random.default_rng([self.seed, self.epoch, index])
            try:
                image = self.transform.load(path.read_bytes(), rng)
            except BadImage as error:
                if path not in self.bad:
                    self.bad[path] = error.kind
                    self.counts[error.kind] += 1
                    log.warning("skipped %s (%s); so far: %s", path, error, dict(self.counts))
                if not self.substitute_bad:
                    return {"skipped": error.kind, "key": path.stem}
                continue
            sample: dict[str, Any] = {"image": image, "key": path.stem}
            if self.captions:
                sample["caption"] = self._caption(path.with_suffix(".txt"))
            return sample
        raise RuntimeError(f"no readable image under {Path(self.paths[0]).parent}")

    def _caption(self, path: Path) -> str:
        if not path.exists():
            return ""
        data = path.read_bytes()
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.counts["caption_not_utf8"] += 1
            log.warning("%s is not UTF-8: undecodable bytes replaced; so far: %s", path, dict(self.counts))
            return data.decode("utf-8", errors="replace").strip()
