"""Cropping and flipping single images, with per-sample random generators.

Every random choice comes from a ``numpy.random.Generator`` handed in by the caller, so a data stream is a
pure function of its seed and position (which is what makes resumed runs see the same batches). A crop is
planned from the image's size alone (:meth:`ImageTransform.plan`), before any pixel is decoded: the same seed gives
the same crop box whether the image is decoded whole or, when the box leaves enough pixels, at a reduced size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vtok.images import to_tensor, to_uint8

from .decode import MIN_SIDE, BadImage, decode_image, decode_pixels, open_image, pil_to_pixels, read_pixels, to_rgb

__all__ = ["CROP_MODES", "IMAGE_EXTENSIONS", "MIN_SIDE", "BadImage", "Crop", "ImageTransform", "adm_center_crop",
           "decode_image", "decode_pixels", "to_rgb", "to_tensor", "to_uint8"]

# random / random_resized for training; for evaluation center (vtok's), full, and the papers' protocols: adm (ADM's
# centre crop: LlamaGen, TokenFlow), resize_bicubic (torchvision Resize + CenterCrop, bicubic: TiTok), resize_bilinear
# (the same, bilinear: Open-MAGVIT2, IBQ)
CROP_MODES = ("random", "random_resized", "center", "full", "adm", "resize_bicubic", "resize_bilinear")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Decoding at 1/r of the size (JPEG DCT scaling) is used when the crop keeps at least this many source pixels per
# output pixel after the reduction, so the reduced image is still downsampled, never upsampled.
_REDUCTIONS = (8, 4, 2)


@dataclass(frozen=True)
class Crop:
    """One planned view of an image of known size.

    ``resize``: ``(width, height)`` to resize the whole image to first, or ``None``. ``box``: ``(left, top, width,
    height)`` cut from the (resized) image. ``out``: ``(width, height)`` the box is resized to. ``flip``: mirror
    left-right.
    """

    resize: tuple[int, int] | None
    box: tuple[int, int, int, int]
    out: tuple[int, int]
    flip: bool

    def reduction(self) -> int:
        """The largest JPEG reduction (8, 4, 2, else 1) after which the box still has >= ``out`` pixels."""
        if self.resize is not None:
            return 1
        return next((r for r in _REDUCTIONS if self.box[2] >= r * self.out[0] and self.box[3] >= r * self.out[1]), 1)


class ViewTransform(Protocol):
    """What a reader asks of a transform: bytes -> the whole decoded image (``decode``), a decoded image -> one
    view (``__call__``), bytes -> one view (``load``, which may decode less). :class:`ImageTransform` (RGB) and
    :class:`~vtok.data.depth.DepthTransform` (one-channel depth) are the two."""

    def decode(self, data: bytes) -> Tensor: ...

    def load(self, data: bytes, rng: np.random.Generator) -> Tensor: ...

    def __call__(self, image: Tensor, rng: np.random.Generator) -> Tensor: ...


@dataclass
class ImageTransform:
    """Crop (and optionally flip) one image to a training or evaluation view.

    Args:
        size: output side length in pixels (ignored by ``mode="full"``).
            ``"adm"`` is ADM's evaluation crop (:func:`adm_center_crop`).
        mode: ``"random"`` crops at native scale after a random resize by a factor in ``resize_range``;
            ``"random_resized"`` is the usual area-and-aspect random-resized crop with area ``scale``;
            ``"center"`` resizes the short side to ``size`` and centre-crops; ``"full"`` keeps the whole
            image, centre-cropped to a multiple of ``multiple``.
        flip: random horizontal flip.
        resize_range: resize factors for ``mode="random"``; ``(1, 1)`` keeps native resolution.
        scale: area fraction range for ``mode="random_resized"``.
        multiple: side lengths are cut down to a multiple of this in ``mode="full"``.
        reduced_decode: in :meth:`load`, decode JPEGs at 1/2, 1/4 or 1/8 size when the planned crop still
            downsamples from there: the same crop box by seed, but the DCT's own scaling filters differently from a
            whole decode (on a 640 x 422 photo centre-cropped to 128 px, 4 levels of 255 apart on average). Off by
            default, so evaluation reads images as other tools do; the training data configs turn it on.

    Resizing is bicubic with antialiasing on 8-bit values (rounded back to 8 bits, as a PIL resize would).
    """

    size: int = 256
    mode: str = "random"
    flip: bool = True
    resize_range: tuple[float, float] = (1.0, 1.0)
    scale: tuple[float, float] = (0.5, 1.0)
    multiple: int = 16
    reduced_decode: bool = False

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"unknown crop mode {self.mode!r}; use one of {list(CROP_MODES)}")

    def __call__(self, image: Image.Image | Tensor, rng: np.random.Generator) -> Tensor:
        """RGB image (PIL, or ``(3, H, W)`` uint8) -> ``(3, size, size)`` float in ``[-1, 1]`` (``(3, H', W')`` for
        ``"full"``).

        Raises:
            BadImage: ``too_small`` when ``"full"`` leaves nothing of the image.
        """
        pixels = pil_to_pixels(to_rgb(image)) if isinstance(image, Image.Image) else image
        if self.mode in PROTOCOL_CROPS:
            return PROTOCOL_CROPS[self.mode](pixels, self.size)
        return self.apply(pixels, self.plan(pixels.shape[2], pixels.shape[1], rng))

    def decode(self, data: bytes) -> Tensor:
        """Image bytes -> the whole image, ``(3, H, W)`` uint8 (what :meth:`__call__` takes; decode caches keep it).

        Raises:
            BadImage: see :func:`vtok.data.decode.decode_pixels`.
        """
        return decode_pixels(data)

    def load(self, data: bytes, rng: np.random.Generator) -> Tensor:
        """Image bytes -> the view :meth:`__call__` gives, decoding at a reduced size when the crop allows.

        Raises:
            BadImage: see :func:`vtok.data.decode.decode_pixels`, and as :meth:`__call__`.
        """
        header = open_image(data)
        width, height = header.size
        if self.mode in PROTOCOL_CROPS:
            return PROTOCOL_CROPS[self.mode](read_pixels(header, data, 1), self.size)
        crop = self.plan(width, height, rng)
        pixels = read_pixels(header, data, crop.reduction() if self.reduced_decode else 1)
        return self.apply(pixels, crop, scale=width / pixels.shape[2])

    def plan(self, width: int, height: int, rng: np.random.Generator) -> Crop:
        """The view of a ``width x height`` image (draws from ``rng``: the crop, then the flip)."""
        if self.mode == "random":
            crop = self._random(width, height, rng)
        elif self.mode == "random_resized":
            crop = self._random_resized(width, height, rng)
        elif self.mode == "center":
            crop = self._center(width, height)
        else:
            cw, ch = width - width % self.multiple, height - height % self.multiple
            if not cw or not ch:
                raise BadImage("too_small", f"{width}x{height} pixels: nothing left after cutting to a multiple "
                                            f"of {self.multiple}")
            crop = Crop(None, ((width - cw) // 2, (height - ch) // 2, cw, ch), (cw, ch), False)
        if self.flip and rng.random() < 0.5:
            crop = Crop(crop.resize, crop.box, crop.out, True)
        return crop

    @staticmethod
    def apply(pixels: Tensor, crop: Crop, scale: float = 1.0) -> Tensor:
        """``(3, H, W)`` uint8 and a plan -> ``(3, out_h, out_w)`` float in ``[-1, 1]``.

        Args:
            scale: source pixels per pixel of ``pixels`` (a reduced decode); the box is divided by it.
        """
        image = pixels
        if crop.resize is not None:
            image = _resize(image, crop.resize[1], crop.resize[0])
        left, top, width, height = (round(v / scale) for v in crop.box)
        left, top = min(left, image.shape[2] - 1), min(top, image.shape[1] - 1)
        image = image[:, top : top + height, left : left + width]
        if (image.shape[2], image.shape[1]) != crop.out:
            image = _resize(image, crop.out[1], crop.out[0])
        if crop.flip:
            image = image.flip(-1)
        # Planes in plain layout whatever the decoder's: batches must not change memory format with the decoder.
        return image.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)

    def _random(self, width: int, height: int, rng: np.random.Generator) -> Crop:
        factor = float(rng.uniform(*self.resize_range))
        factor = max(factor, self.size / min(width, height))  # never shrink below the crop size
        resize = None
        if factor != 1.0:
            resize = (max(self.size, round(width * factor)), max(self.size, round(height * factor)))
            width, height = resize
        left = int(rng.integers(0, width - self.size + 1))
        top = int(rng.integers(0, height - self.size + 1))
        return Crop(resize, (left, top, self.size, self.size), (self.size, self.size), False)

    def _random_resized(self, width: int, height: int, rng: np.random.Generator) -> Crop:
        for _ in range(10):
            area = width * height * rng.uniform(*self.scale)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
            if 0 < cw <= width and 0 < ch <= height:
                left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
                return Crop(None, (left, top, cw, ch), (self.size, self.size), False)
        return self._center(width, height)

    def _center(self, width: int, height: int) -> Crop:
        # The centred square of the short side, resized to size: the same pixels as resizing the short side to
        # size and cutting the middle, without resizing the parts that are cut away.
        side = min(width, height)
        return Crop(None, ((width - side) // 2, (height - side) // 2, side, side), (self.size, self.size), False)


def _resize(pixels: Tensor, height: int, width: int) -> Tensor:
    """``(3, H, W)`` uint8 (any strides) -> ``(3, height, width)`` uint8: bicubic, antialiased when shrinking,
    rounded. Torch's native 8-bit kernel (fixed-point weights, about 3x the float path on CPU) reads channels-last
    pixels (what ``decode_jpeg`` and PIL give) in place, so a crop is never copied before it is resized."""
    return F.interpolate(pixels[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]


def adm_center_crop(pixels: Tensor, size: int) -> Tensor:
    """``(3, H, W)`` uint8 -> ``(3, size, size)`` in ``[-1, 1]`` by ADM's centre crop (guided-diffusion's
    ``center_crop_arr``, which LlamaGen's and TokenFlow's reconstruction numbers use): halve with a box filter while
    the short side is at least ``2 * size``, resize bicubically so the short side is ``size``, cut the centre. Done
    with PIL, as the reference does, so the pixels are the reference's."""
    image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    out = torch.from_numpy(np.asarray(image.crop((left, top, left + size, top + size))).copy()).permute(2, 0, 1)
    return out.to(torch.float32).div_(127.5).sub_(1.0)


def torchvision_center_crop(pixels: Tensor, size: int, bicubic: bool) -> Tensor:
    """``(3, H, W)`` uint8 -> ``(3, size, size)`` in ``[-1, 1]`` as ``transforms.Resize(size)`` then
    ``CenterCrop(size)`` make it from a PIL image (bicubic: TiTok's evaluation; bilinear, torchvision's default:
    Open-MAGVIT2's and IBQ's)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
    mode = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
    image = TF.center_crop(TF.resize(image, size, interpolation=mode, antialias=True), size)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)


PROTOCOL_CROPS = {
    "adm": adm_center_crop,
    "resize_bicubic": lambda pixels, size: torchvision_center_crop(pixels, size, bicubic=True),
    "resize_bilinear": lambda pixels, size: torchvision_center_crop(pixels, size, bicubic=False),
}
