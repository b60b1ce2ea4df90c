"""Image quality metrics on 8-bit values, as reported by codecs: PSNR (defined once, in :mod:`vtok.images`), SSIM,
and a sharpness ratio (how much of the originals' fine detail the reconstructions keep)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from vtok.images import psnr, to_uint8

__all__ = ["psnr", "sharpness", "ssim"]


def ssim(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> ``(B,)`` SSIM (Gaussian window 11, sigma 1.5, 8-bit range)."""
    a, b = to_uint8(reconstruction).float(), to_uint8(target).float()
    return structural_similarity_index_measure(a, b, data_range=255.0, reduction="none")


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def sharpness(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> ``(B,)`` ratio of high-frequency energy, reconstruction to original:
    the mean squared 3x3 Laplacian response (per channel, inside the border) of each. 1 keeps the originals' detail;
    a blurred reconstruction (what a regression decoder gives where it is unsure) scores below 1, noise above."""
    kernel = LAPLACIAN.to(target.device, torch.float32).expand(target.shape[1], 1, 3, 3)

    def energy(images: Tensor) -> Tensor:
        return F.conv2d(images.float(), kernel, groups=images.shape[1]).pow(2).mean(dim=(1, 2, 3))

    return energy(reconstruction) / energy(target).clamp(min=1e-12)
