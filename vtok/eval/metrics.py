"""Image quality metrics on 8-bit values, as reported by codecs: PSNR and SSIM."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from vtok.data.transforms import to_uint8


def psnr(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> ``(B,)`` PSNR in dB after rounding both to 8 bits."""
    a, b = to_uint8(reconstruction).float(), to_uint8(target).float()
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def ssim(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> ``(B,)`` SSIM (Gaussian window 11, sigma 1.5, 8-bit range)."""
    a, b = to_uint8(reconstruction).float(), to_uint8(target).float()
    return structural_similarity_index_measure(a, b, data_range=255.0, reduction="none")
