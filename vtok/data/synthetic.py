"""A small synthetic captioned dataset: coloured shapes on coloured backgrounds, with matching captions.

Deterministic per index, needs no files; for tests and smoke runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
    "white": (240, 240, 240), "black": (20, 20, 20), "purple": (140, 50, 170), "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "stripe")


class SyntheticCaptions(Dataset):
    """``length`` images of ``size x size``: a shape of one colour on a smooth background of another.

    Yields dicts with ``image`` ``(channels, size, size)`` in ``[-1, 1]``, ``key`` and (with ``captions``, the
    default) ``caption``. ``channels=1`` gives the luminance, a stand-in for one-channel inputs (depth maps).
    """

    def __init__(self, length: int = 64, size: int = 32, seed: int = 0, captions: bool = True,
                 channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels={channels}: 3 (RGB) or 1 (luminance)")
        self.length, self.size, self.seed, self.captions, self.channels = length, size, seed, captions, channels

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        rng = np.random.default_rng([self.seed, index])
        names = list(COLOURS)
        fg, bg = rng.choice(len(names), size=2, replace=False)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s] / max(s - 1, 1)
        shade = 0.75 + 0.25 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
        image = np.asarray(COLOURS[names[bg]], dtype=np.float32)[None, None] * shade[..., None]
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        elif shape == "square":
            mask = (abs(xx - cx) < r) & (abs(yy - cy) < r)
        else:
            mask = abs(yy - cy) < r / 3
        image[mask] = COLOURS[names[fg]]
        tensor = torch.from_numpy(image.clip(0, 255)).permute(2, 0, 1).float() / 127.5 - 1.0
        if self.channels == 1:
            tensor = (tensor * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
        caption = f"a {names[fg]} {shape} on a {names[bg]} background"
        sample = {"image": tensor, "key": f"synthetic-{index:06d}"}
        if self.captions:
            sample["caption"] = caption
        return sample
