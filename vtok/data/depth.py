"""Depth maps as tokenizer inputs (AURORA's perception tokens): one channel, 16-bit PNG (or 8-bit, or 32-bit float
TIFF), kept in float from the file to the tokenizer, never through 8-bit RGB.

Raw values times ``depth_scale`` are metres (16-bit PNGs usually hold millimetres: 0.001); metres over
``max_depth`` map to ``[-1, 1]``. :func:`to_metres` inverts that for depth metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .decode import MIN_SIDE, BadImage, _load, open_image
from .transforms import PROTOCOL_CROPS, ImageTransform

DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "L")


def decode_depth(data: bytes, depth_scale: float = 0.001, min_side: int = MIN_SIDE) -> Tensor:
    """Bytes of a one-channel image -> ``(1, H, W)`` float32 metres (raw value x ``depth_scale``).

    Raises:
        BadImage: as :func:`vtok.data.decode.open_image`, or ``not_depth`` for an image with colour channels.
    """
    image = open_image(data, min_side)
    if image.mode not in DEPTH_MODES:
        raise BadImage("not_depth", f"a depth map has one channel; this image is {image.mode}")
    values = np.asarray(_load(image), dtype=np.float32)
    return torch.from_numpy(values.copy())[None] * depth_scale


def to_metres(normalised: Tensor, max_depth: float) -> Tensor:
    """``[-1, 1]`` values (what a depth tokenizer reads and writes) -> metres."""
    return (normalised.float().clamp(-1, 1) + 1) * (max_depth / 2)


@dataclass
class DepthTransform:
    """Crop (and optionally flip) one depth map to ``(1, size, size)`` in ``[-1, 1]``, resampling in float.

    The crop is planned exactly as :class:`ImageTransform` plans it (same modes and arguments, same draws from the
    generator); resizing is bilinear with antialiasing on metres.

    Args:
        size, mode, flip, resize_range, scale, multiple: as :class:`ImageTransform` (``random``,
            ``random_resized``, ``center``, ``full``).
        depth_scale: raw value -> metres.
        max_depth: metres mapped to ``+1`` (farther is clamped).
    """

    size: int = 256
    mode: str = "random_resized"
    flip: bool = True
    resize_range: tuple[float, float] = (1.0, 1.0)
    scale: tuple[float, float] = (0.8, 1.0)
    multiple: int = 16
    depth_scale: float = 0.001
    max_depth: float = 10.0
    planner: ImageTransform = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode in PROTOCOL_CROPS:
            raise ValueError(f"mode={self.mode!r} is an RGB evaluation protocol; depth maps take random, "
                             "random_resized, center or full")
        self.planner = ImageTransform(self.size, self.mode, self.flip, tuple(self.resize_range), tuple(self.scale),
                                      self.multiple)

    def decode(self, data: bytes) -> Tensor:
        """Bytes -> ``(1, H, W)`` metres."""
        return decode_depth(data, self.depth_scale)

    def load(self, data: bytes, rng: np.random.Generator) -> Tensor:
        """Bytes -> the view :meth:`__call__` gives."""
        return self(self.decode(data), rng)

    def __call__(self, metres: Tensor, rng: np.random.Generator) -> Tensor:
        """``(1, H, W)`` metres -> ``(1, size, size)`` in ``[-1, 1]`` (``(1, H', W')`` for ``full``)."""
        crop = self.planner.plan(metres.shape[2], metres.shape[1], rng)
        depth = metres.float()
        if crop.resize is not None:
            depth = _resize(depth, crop.resize[1], crop.resize[0])
        left, top, width, height = crop.box
        depth = depth[:, top: top + height, left: left + width]
        if (depth.shape[2], depth.shape[1]) != crop.out:
            depth = _resize(depth, crop.out[1], crop.out[0])
        if crop.flip:
            depth = depth.flip(-1)
        return (depth / (self.max_depth / 2) - 1).clamp(-1, 1).contiguous()


def _resize(depth: Tensor, height: int, width: int) -> Tensor:
    return F.interpolate(depth[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
