"""Image quality metrics on 8-bit values, as reported by codecs: PSNR (defined once, in :mod:`vtok.images`), SSIM,
and a sharpness ratio (how much of the originals' fine detail the reconstructions keep); and for depth maps the
errors depth estimation reports, in metres."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from vtok.images import psnr, to_uint8

__all__ = ["depth_errors", "psnr", "sharpness", "ssim"]


def depth_errors(reconstruction: Tensor, target: Tensor, max_depth: float, min_depth: float = 1e-3
                 ) -> dict[str, Tensor]:
    """``(B, 1, H, W)`` depth maps in ``[-1, 1]`` (``max_depth`` metres at ``+1``) -> per image ``(B,)``:
    ``abs_rel`` (mean ``|d' - d| / d``), ``rmse`` (metres) and ``delta1`` (share of pixels with
    ``max(d'/d, d/d') < 1.25``), over the pixels whose true depth exceeds ``min_depth`` (0 marks no measurement)."""
    predicted = (reconstruction.float().clamp(-1, 1) + 1) * (max_depth / 2)
    true = (target.float().clamp(-1, 1) + 1) * (max_depth / 2)
    valid = (true > min_depth).float()
    count = valid.flatten(1).sum(1).clamp_min(1)
    predicted = predicted.clamp_min(min_depth)
    abs_rel = ((predicted - true).abs() / true.clamp_min(min_depth) * valid).flatten(1).sum(1) / count
    rmse = (((predicted - true) ** 2 * valid).flatten(1).sum(1) / count).sqrt()
    ratio = torch.maximum(predicted / true.clamp_min(min_depth), true / predicted)
    delta1 = ((ratio < 1.25).float() * valid).flatten(1).sum(1) / count
    return {"abs_rel": abs_rel, "rmse": rmse, "delta1": delta1}


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
