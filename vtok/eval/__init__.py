"""Evaluation: metrics, codec baselines and reports."""

from .baselines import jpeg_at_bpp, patch_mean_at_bpp
from .evaluate import evaluate, evaluate_to_dir
from .metrics import psnr, ssim

__all__ = ["evaluate", "evaluate_to_dir", "jpeg_at_bpp", "patch_mean_at_bpp", "psnr", "ssim"]
