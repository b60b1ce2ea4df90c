"""Picture helpers shared by every layer: 8-bit conversion, PSNR, and side-by-side grids.

They sit at the bottom of the package (no Lightning, no data pipeline) so that tokenizers, training callbacks
and evaluation all measure and draw images the same way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """``(..., 3, H, W)`` floats in ``[-1, 1]`` -> uint8 in ``[0, 255]`` (rounded, clamped)."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def to_tensor(image: Image.Image) -> Tensor:
    """RGB ``PIL.Image`` -> ``(3, H, W)`` float tensor in ``[-1, 1]``."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def psnr(reconstruction: Tensor, target: Tensor, eight_bit: bool = True) -> Tensor:
    """``(B, C, H, W)`` images in ``[-1, 1]`` -> ``(B,)`` PSNR in dB.

    Args:
        eight_bit: round both images to 8-bit values first and measure on the 0..255 scale, as codecs are
            reported (evaluation, validation). ``False`` measures the floats themselves on their range of 2
            (the token-budget search, which compares unrounded decoder outputs).
    """
    if eight_bit:
        a, b, peak = to_uint8(reconstruction).float(), to_uint8(target).float(), 255.0
    else:
        a, b, peak = reconstruction.float(), target.float(), 2.0
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak**2 / mse.clamp_min(1e-10 if eight_bit else 1e-12))


def image_grid(originals: Tensor, *reconstructions: Tensor) -> Image.Image:
    """``(B, 3, H, W)`` batches in ``[-1, 1]`` -> one picture, one row per batch: originals above their
    reconstructions (several rows for several seeds of a generative decoder). One-channel batches (depth maps)
    show as grey."""
    rows = []
    for batch in (originals, *reconstructions):
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
        pixels = to_uint8(batch.detach().float().cpu().clamp(-1, 1))  # B, 3, H, W
        rows.append(torch.cat(list(pixels), dim=2))  # 3, H, B*W
    return Image.fromarray(torch.cat(rows, dim=1).permute(1, 2, 0).numpy())


def square_tile(image: Tensor, side: int) -> Tensor:
    """``(3, H, W)`` -> ``(3, side, side)``: the centre square, resized (pictures of images of any shape)."""
    short = min(image.shape[1:])
    top, left = (image.shape[1] - short) // 2, (image.shape[2] - short) // 2
    square = image[:, top : top + short, left : left + short]
    return F.interpolate(square[None], size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
