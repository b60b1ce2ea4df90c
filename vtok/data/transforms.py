"""Decoding and cropping of single images, with per-sample random generators.

Every random choice comes from a ``numpy.random.Generator`` handed in by the caller, so a data stream is a
pure function of its seed and position (which is what makes resumed runs see the same batches).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch import Tensor

from vtok.images import to_tensor, to_uint8

__all__ = ["IMAGE_EXTENSIONS", "MIN_SIDE", "BadImage", "ImageTransform", "decode_image", "to_rgb", "to_tensor",
           "to_uint8"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


# Shorter sides than this are icons or damage, not images to learn from (and a 1x1 image cannot be cut).
MIN_SIDE = 16


class BadImage(ValueError):
    """A sample that cannot be used, with its ``kind``: ``empty`` (zero bytes), ``undecodable`` (truncated, not an
    image, wrong extension with unreadable content), ``too_large`` (a decompression bomb: the declared size exceeds
    PIL's limit), ``too_small`` (a side under :data:`MIN_SIDE`, or nothing left after the crop), ``no_image``
    (a sample without an image member)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def decode_image(data: bytes, min_side: int = MIN_SIDE) -> Image.Image:
    """Bytes -> RGB ``PIL.Image`` (every mode converted: see :func:`to_rgb`).

    Raises:
        BadImage: ``empty``, ``undecodable``, ``too_large`` or ``too_small`` (see :class:`BadImage`).
    """
    if not data:
        raise BadImage("empty", "zero-byte file")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # forces a full decode, so truncated files fail here and not in a worker later
    except Image.DecompressionBombError as error:
        raise BadImage("too_large", str(error)) from error
    except Exception as error:  # PIL raises many types for corrupt data
        raise BadImage("undecodable", f"{type(error).__name__}: {error}") from error
    if min(image.size) < min_side:
        raise BadImage("too_small", f"{image.size[0]}x{image.size[1]} pixels, under {min_side} on a side")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16- and 32-bit greyscale are scaled (not clipped) to 8 bits, transparency is
    composited onto white, CMYK / palette / greyscale / YCbCr are converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass
class ImageTransform:
    """Crop (and optionally flip) one image to a training or evaluation view.

    Args:
        size: output side length in pixels (ignored by ``mode="full"``).
        mode: ``"random"`` crops at native scale after a random resize by a factor in ``resize_range``;
            ``"random_resized"`` is the usual area-and-aspect random-resized crop with area ``scale``;
            ``"center"`` resizes the short side to ``size`` and centre-crops; ``"full"`` keeps the whole
            image, centre-cropped to a multiple of ``multiple``.
        flip: random horizontal flip.
        resize_range: resize factors for ``mode="random"``; ``(1, 1)`` keeps native resolution.
        scale: area fraction range for ``mode="random_resized"``.
        multiple: side lengths are cut down to a multiple of this in ``mode="full"``.
    """

    size: int = 256
    mode: str = "random"
    flip: bool = True
    resize_range: tuple[float, float] = (1.0, 1.0)
    scale: tuple[float, float] = (0.5, 1.0)
    multiple: int = 16

    def __post_init__(self) -> None:
        if self.mode not in ("random", "random_resized", "center", "full"):
            raise ValueError(f"unknown crop mode {self.mode!r}; use random, random_resized, center or full")

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Tensor:
        """RGB image -> ``(3, size, size)`` tensor in ``[-1, 1]`` (``(3, H', W')`` for ``"full"``).

        Raises:
            BadImage: ``too_small`` when ``"full"`` leaves nothing of the image.
        """
        if self.mode == "random":
            image = self._random_crop(image, rng)
        elif self.mode == "random_resized":
            image = self._random_resized_crop(image, rng)
        elif self.mode == "center":
            image = self._center_crop(image)
        else:
            w, h = image.size
            cw, ch = w - w % self.multiple, h - h % self.multiple
            if not cw or not ch:
                raise BadImage("too_small", f"{w}x{h} pixels: nothing left after cutting to a multiple of "
                                            f"{self.multiple}")
            image = image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image)

    def _random_crop(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        factor = float(rng.uniform(*self.resize_range))
        # Never shrink below the crop size.
        factor = max(factor, self.size / min(w, h))
        if factor != 1.0:
            image = image.resize((max(self.size, round(w * factor)), max(self.size, round(h * factor))), Image.BICUBIC)
            w, h = image.size
        left = int(rng.integers(0, w - self.size + 1))
        top = int(rng.integers(0, h - self.size + 1))
        return image.crop((left, top, left + self.size, top + self.size))

    def _random_resized_crop(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        for _ in range(10):
            area = w * h * rng.uniform(*self.scale)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return image.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + cw, top + ch))
        return self._center_crop(image)

    def _center_crop(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        factor = self.size / min(w, h)
        image = image.resize((max(self.size, round(w * factor)), max(self.size, round(h * factor))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))
