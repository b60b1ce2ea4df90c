"""Codecs to compare a tokenizer against at the same bits per pixel.

* Pillow's JPEG, with the quality whose file size is nearest the target bits per pixel (per image).
* JPEG or WebP at the same quality instead: per image, the smallest file whose PSNR reaches a target (the rate a
  codec needs for a tokenizer's PSNR, for rate-distortion tables).
* A tokenizer that learns nothing: each ``p x p`` patch averaged to one colour, quantised to ``b`` bits per
  channel (``3b`` bits per token) and decoded by bicubic upsampling.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vtok.images import to_tensor, to_uint8

from .metrics import psnr


@dataclass
class BaselineResult:
    psnr: float
    bits_per_pixel: float
    setting: str


CODECS = {"jpeg": {"format": "JPEG", "optimize": True}, "webp": {"format": "WEBP", "method": 6}}


def codec_roundtrip(image: Tensor, quality: int, codec: str = "jpeg") -> tuple[Tensor, float]:
    """``(3, H, W)`` image in ``[-1, 1]`` -> (the image through Pillow's ``codec`` at ``quality``, bits per pixel of
    the file)."""
    pil = Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy())
    buffer = io.BytesIO()
    pil.save(buffer, quality=quality, **CODECS[codec])
    bpp = 8 * buffer.tell() / (image.shape[1] * image.shape[2])
    buffer.seek(0)
    return to_tensor(Image.open(buffer).convert("RGB")), bpp


def jpeg_roundtrip(image: Tensor, quality: int) -> tuple[Tensor, float]:
    """``(3, H, W)`` image in ``[-1, 1]`` -> (JPEG-decoded image, bits per pixel of the file)."""
    return codec_roundtrip(image, quality, "jpeg")


def codec_at_psnr(images: list[Tensor], targets: list[float], codec: str = "jpeg") -> BaselineResult:
    """Mean bits per pixel (and PSNR) of ``codec`` when each ``(3, H, W)`` image gets the lowest quality (1..100)
    whose PSNR reaches its target; an image no quality reaches gets quality 100."""
    rates, scores, qualities = [], [], []
    for image, target in zip(images, targets):
        low, high = 1, 100
        while low < high:  # PSNR rises with quality (nearly monotone): bisect for the lowest quality reaching it
            middle = (low + high) // 2
            decoded, _ = codec_roundtrip(image, middle, codec)
            if float(psnr(decoded[None], image[None])) >= target:
                high = middle
            else:
                low = middle + 1
        decoded, bpp = codec_roundtrip(image, low, codec)
        rates.append(bpp)
        scores.append(float(psnr(decoded[None], image[None])))
        qualities.append(low)
    return BaselineResult(float(np.mean(scores)), float(np.mean(rates)), f"{codec} quality per image {qualities}")


def jpeg_at_bpp(images: list[Tensor], target_bpp: float) -> BaselineResult:
    """Mean PSNR of JPEG over ``images`` (each ``(3, H, W)``), each at the quality nearest ``target_bpp``."""
    scores, rates, qualities = [], [], []
    for image in images:
        best = None
        for quality in range(1, 96):
            decoded, bpp = jpeg_roundtrip(image, quality)
            if best is None or abs(bpp - target_bpp) < abs(best[1] - target_bpp):
                best = (decoded, bpp, quality)
            if bpp > target_bpp:  # file size grows with quality: no closer setting above this one
                break
        decoded, bpp, quality = best
        scores.append(float(psnr(decoded[None], image[None])))
        rates.append(bpp)
        qualities.append(quality)
    return BaselineResult(float(np.mean(scores)), float(np.mean(rates)), f"quality per image {qualities}")


def patch_mean_roundtrip(image: Tensor, patch: int, bits: int) -> Tensor:
    """``(3, H, W)`` in ``[-1, 1]`` -> the no-learning tokenizer's reconstruction (H, W multiples of ``patch``)."""
    levels = 2**bits - 1
    means = F.avg_pool2d(image[None].float(), patch).add(1).div(2)
    tokens = (means * levels).round().div(levels).mul(2).sub(1)
    return F.interpolate(tokens, scale_factor=patch, mode="bicubic", align_corners=False).clamp(-1, 1)[0]


def patch_mean_settings(target_bpp: float, patches: tuple[int, ...] = (2, 4, 8, 16),
                        tolerance: float = 0.1) -> list[tuple[int, int]]:
    """``(patch, bits)`` settings whose rate ``3 * bits / patch**2`` is within ``tolerance`` (relative) of
    ``target_bpp``, or the single nearest one when none is."""
    options = [(abs(3 * b / p**2 - target_bpp), p, b) for p in patches for b in range(1, 9)]
    close = [(p, b) for gap, p, b in options if gap <= tolerance * target_bpp]
    return close or [min(options)[1:]]


def patch_mean_at_bpp(images: list[Tensor], target_bpp: float) -> BaselineResult:
    """Mean PSNR of the no-learning tokenizer: the best of the settings at (about) ``target_bpp``.

    Several settings can share a rate (``4x4`` at 1 bit and ``8x8`` at 4 bits are both 0.1875 bpp); the
    yardstick is the strongest of them.
    """
    best: BaselineResult | None = None
    for patch, bits in patch_mean_settings(target_bpp):
        scores = []
        for image in images:
            h, w = image.shape[1] - image.shape[1] % patch, image.shape[2] - image.shape[2] % patch
            crop = image[:, :h, :w]
            scores.append(float(psnr(patch_mean_roundtrip(crop, patch, bits)[None], crop[None])))
        result = BaselineResult(float(np.mean(scores)), 3 * bits / patch**2,
                                f"{patch}x{patch} patch mean, {bits} bits per channel, bicubic upsampling")
        if best is None or result.psnr > best.psnr:
            best = result
    assert best is not None
    return best

