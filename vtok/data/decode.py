"""Image bytes -> pixels: header checks, any PIL mode to 8-bit RGB, and JPEG through libjpeg-turbo.

Two outputs for two callers: :func:`decode_image` gives a ``PIL.Image`` (the shard writer's check, tests,
pictures); :func:`decode_pixels` gives the ``(3, H, W)`` uint8 tensor the training transforms work on, decoding
baseline and progressive RGB / greyscale JPEG with ``torchvision.io.decode_jpeg`` (about twice as fast as PIL on
256 px photos, and no PIL -> numpy -> tensor copies), optionally at 1/2, 1/4 or 1/8 size when the caller's crop
leaves enough pixels (libjpeg's DCT scaling through PIL's ``draft``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["MIN_SIDE", "BadImage", "decode_image", "decode_pixels", "open_image", "pil_to_pixels", "read_pixels",
           "to_rgb"]

# Shorter sides than this are icons or damage, not images to learn from (and a 1x1 image cannot be cut).
MIN_SIDE = 16

# JPEG modes libjpeg-turbo turns into RGB itself; CMYK / YCCK go through PIL, which knows Adobe's inverted CMYK.
_TURBO_MODES = ("RGB", "L")


class BadImage(ValueError):
    """A sample that cannot be used, with its ``kind``: ``empty`` (zero bytes), ``undecodable`` (truncated, not an
    image, wrong extension with unreadable content), ``too_large`` (a decompression bomb: the declared size exceeds
    PIL's limit), ``too_small`` (a side under :data:`MIN_SIDE`, or nothing left after the crop), ``no_image``
    (a sample without an image member)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def open_image(data: bytes, min_side: int = MIN_SIDE) -> Image.Image:
    """Bytes -> a ``PIL.Image`` whose header is read and checked; its pixels are not decoded yet.

    Raises:
        BadImage: ``empty``, ``undecodable`` (no known image header), ``too_large`` or ``too_small``.
    """
    if not data:
        raise BadImage("empty", "zero-byte file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise BadImage("too_large", str(error)) from error
    except Exception as error:  # PIL raises many types for corrupt data
        raise BadImage("undecodable", f"{type(error).__name__}: {error}") from error
    if min(image.size) < min_side:
        raise BadImage("too_small", f"{image.size[0]}x{image.size[1]} pixels, under {min_side} on a side")
    return image


def decode_image(data: bytes, min_side: int = MIN_SIDE) -> Image.Image:
    """Bytes -> RGB ``PIL.Image`` (every mode converted: see :func:`to_rgb`).

    Raises:
        BadImage: ``empty``, ``undecodable``, ``too_large`` or ``too_small`` (see :class:`BadImage`).
    """
    return to_rgb(_load(open_image(data, min_side)))


def decode_pixels(data: bytes, min_side: int = MIN_SIDE, reduce: int = 1) -> Tensor:
    """Bytes -> ``(3, H, W)`` uint8 RGB pixels.

    Args:
        reduce: 2, 4 or 8 decodes a JPEG at that fraction of its size (``H = ceil(height / reduce)``); other
            formats, and 1, decode whole. Callers divide their crop box by ``width / W`` of what comes back.

    Raises:
        BadImage: as :func:`decode_image`.
    """
    return read_pixels(open_image(data, min_side), data, reduce)


def read_pixels(image: Image.Image, data: bytes, reduce: int = 1) -> Tensor:
    """:func:`open_image`'s result and its bytes -> ``(3, H, W)`` uint8 RGB (see :func:`decode_pixels`)."""
    if image.format == "JPEG" and image.mode in _TURBO_MODES:
        if reduce > 1:
            image.draft("RGB", (-(-image.size[0] // reduce), -(-image.size[1] // reduce)))
            return pil_to_pixels(to_rgb(_load(image)))
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # libjpeg's "corrupt data" warnings: PIL below gives the verdict
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # truncated, or a JPEG variant this libjpeg-turbo build lacks: PIL decodes it or says why not
    return pil_to_pixels(to_rgb(_load(image)))


def pil_to_pixels(image: Image.Image) -> Tensor:
    """RGB ``PIL.Image`` -> ``(3, H, W)`` uint8 (a view of one copy of the pixels)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16- and 32-bit greyscale are scaled (not clipped) to 8 bits, transparency is
    composited onto white, CMYK / palette / greyscale / YCbCr are converted. RGB comes back as it is."""
    if image.mode == "RGB":
        return image
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


def _load(image: Image.Image) -> Image.Image:
    """Decode the pixels now, so truncated files fail here and not later in a worker."""
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise BadImage("too_large", str(error)) from error
    except Exception as error:
        raise BadImage("undecodable", f"{type(error).__name__}: {error}") from error
    return image
