"""One image on its way into a shard: checked, then resized and re-encoded if asked (``vtok-shards resize=...``).

Runs in the writer's worker processes, so everything here is a plain function of picklable values.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from .decode import BadImage, decode_image, open_image

FORMATS = ("keep", "jpeg", "webp", "png")
RESIZE_MODES = ("shorter", "center_crop")
# what a kept format is written as after a resize (formats Pillow writes well; others become PNG)
_WRITE_AS = {"JPEG": ("jpeg", "jpg"), "WEBP": ("webp", "webp"), "PNG": ("png", "png")}


@dataclass(frozen=True)
class ImageRecipe:
    """What the writer does to each image.

    Args:
        resize: ``None`` keeps the size; else the short side becomes at most this many pixels (``shorter``:
            downscaling only, aspect kept) or exactly this many with a centre crop to a square (``center_crop``).
        resize_mode: ``shorter`` or ``center_crop``.
        format: ``keep`` (the original bytes when nothing else changes, else the original format), ``jpeg``,
            ``webp`` or ``png``.
        quality: JPEG / WebP quality (1-100).
        verify: decode each image first (unusable ones are skipped and counted by kind); off only copies bytes.
    """

    resize: int | None = None
    resize_mode: str = "shorter"
    format: str = "keep"
    quality: int = 90
    verify: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format}: one of {', '.join(FORMATS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={self.resize_mode}: one of {', '.join(RESIZE_MODES)}")
        if self.resize is not None and self.resize < 16:
            raise ValueError(f"resize={self.resize}: at least 16 pixels (or null: keep the size)")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality={self.quality}: 1..100")

    @property
    def copies_originals(self) -> bool:
        return self.resize is None and self.format == "keep"


@dataclass
class Prepared:
    """One item after :func:`prepare`: the bytes to write (``None`` when skipped, with ``skipped`` its kind)."""

    key: str
    data: bytes | None
    extension: str
    captions: list[str]
    bytes_in: int
    skipped: str | None = None
    detail: str = ""


def prepare(item: tuple[str, bytes | None, str, list[str]], recipe: ImageRecipe) -> Prepared:
    """``(key, image bytes, extension, captions)`` -> what to write, following ``recipe``; a ``None`` image is
    ``no_image``. Never raises for a bad image: it comes back skipped, with its :class:`BadImage` kind."""
    key, data, extension, captions = item
    size = len(data or b"")
    try:
        if data is None:
            raise BadImage("no_image", "the row has no image")
        if recipe.copies_originals:
            if recipe.verify:
                decode_image(data)
            return Prepared(key, data, extension, captions, size)
        original_format = open_image(data).format or "PNG"
        image = decode_image(data)
        if recipe.resize is not None:
            image = resize(image, recipe.resize, recipe.resize_mode)
        name, extension = _WRITE_AS.get(original_format, ("png", "png")) if recipe.format == "keep" else (
            recipe.format, {"jpeg": "jpg"}.get(recipe.format, recipe.format))
        return Prepared(key, encode(image, name, recipe.quality), extension, captions, size)
    except BadImage as error:
        return Prepared(key, None, extension, captions, size, error.kind, str(error))


def resize(image: Image.Image, side: int, mode: str = "shorter") -> Image.Image:
    """RGB image -> short side at most ``side`` (``shorter``; never enlarged) or a ``side x side`` centre crop of
    the image scaled so its short side is ``side`` (``center_crop``; enlarged if smaller). Bicubic, antialiased
    (Pillow filters over the whole footprint when it shrinks)."""
    width, height = image.size
    scale = side / min(width, height)
    if mode == "shorter" and scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if mode == "shorter":
        return image.resize(size, Image.Resampling.BICUBIC)
    scaled = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    return scaled.crop((left, top, left + side, top + side))


def encode(image: Image.Image, format: str, quality: int = 90) -> bytes:
    """RGB image -> ``jpeg`` / ``webp`` (at ``quality``) or ``png`` bytes."""
    buffer = io.BytesIO()
    if format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    elif format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
