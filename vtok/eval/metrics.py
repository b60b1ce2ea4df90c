"""Image quality metrics on 8-bit values, as reported by codecs: PSNR (defined once, in :mod:`vtok.images`) and
SSIM."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from vtok.images import psnr, to_uint8

__all__ = ["psnr", "ssim"]


def ssim(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> ``(B,)`` SSIM (Gaussian window 11, sigma 1.5, 8-bit range)."""
    a, b = to_uint8(reconstruction).float(), to_uint8(target).float()
    return structural_similarity_index_measure(a, b, data_range=255.0, reduction="none")
