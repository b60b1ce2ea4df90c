"""Evaluate a tokenizer on a set of images: quality, codebook statistics, rate, and codec baselines."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vtok.quantizers.stats import usage_and_perplexity
from vtok.tokenizers import Tokenizer
from vtok.training.callbacks import image_grid

from .baselines import jpeg_at_bpp, patch_mean_at_bpp
from .metrics import psnr, ssim

GRID_SIZE = 192  # side of each tile in reconstructions.png
MAX_HISTOGRAM = 2**24  # larger codebooks report the number of distinct codes instead of usage


@torch.no_grad()
def evaluate(
    tokenizer: Tokenizer,
    images: Iterable[dict[str, Any]],
    max_images: int | None = None,
    baselines: bool = True,
    grid_images: int = 8,
) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]:
    """Reconstruct each image and measure it.

    Args:
        tokenizer: the model, in eval mode.
        images: samples with ``image`` ``(3, H, W)`` or ``(B, 3, H, W)`` in ``[-1, 1]``.
        max_images: stop after this many images.
        baselines: also run JPEG and the patch-mean tokenizer at the tokenizer's bits per pixel.
        grid_images: how many originals/reconstructions to keep for the picture.

    Returns:
        ``(report, originals, reconstructions)``; the report holds per-set means (``psnr``, ``ssim``,
        ``bits_per_pixel``, ...), codebook statistics and the baselines.
    """
    device = next(tokenizer.parameters()).device
    psnrs, ssims, originals, reconstructions, kept = [], [], [], [], []
    # A histogram only for codebooks that fit one (LFQ/BSQ may have 2^32 implicit codes).
    histogram = bool(tokenizer.vocab_size) and tokenizer.vocab_size <= MAX_HISTOGRAM
    counts = torch.zeros(tokenizer.vocab_size if histogram else 1, device=device)
    unique: set[int] = set()
    pixels = tokens = 0
    encode_time = decode_time = 0.0
    progress = tqdm(images, desc="evaluating", unit="batch", disable=None)
    for sample in progress:
        batch = sample["image"]
        batch = (batch[None] if batch.ndim == 3 else batch).to(device)
        start = time.perf_counter()
        encoded = tokenizer.encode(batch)
        encode_time += time.perf_counter() - start
        start = time.perf_counter()
        decoded = tokenizer.decode(encoded).clamp(-1, 1)
        decode_time += time.perf_counter() - start
        psnrs += psnr(decoded, batch).tolist()
        ssims += ssim(decoded, batch).tolist()
        if encoded.indices is not None and histogram:
            counts += torch.bincount(encoded.indices.reshape(-1), minlength=counts.numel()).float()
        elif encoded.indices is not None:
            unique.update(encoded.indices.reshape(-1).tolist())
        tokens += math.prod(encoded.layout) * batch.shape[0]
        pixels += batch.shape[0] * batch.shape[2] * batch.shape[3]
        for original, reconstruction in zip(batch, decoded):
            kept.append(original.cpu())
            if len(originals) < grid_images:
                originals.append(original.cpu())
                reconstructions.append(reconstruction.cpu())
        if max_images is not None and len(kept) >= max_images:
            break
    if not kept:
        raise ValueError("evaluation set is empty")

    bits_per_token = tokenizer.bits_per_token
    report: dict[str, Any] = {
        "num_images": len(kept),
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "psnr_per_image": psnrs,
        "tokens_per_image": tokens / len(kept),
        "bits_per_token": bits_per_token,
        "bits_per_pixel": tokens * bits_per_token / pixels,  # bits_per_token covers every code of a position
        "encode_images_per_second": len(kept) / max(encode_time, 1e-9),
        "decode_images_per_second": len(kept) / max(decode_time, 1e-9),
    }
    if tokenizer.vocab_size and not histogram:
        report.update({"vocab_size": tokenizer.vocab_size, "unique_codes": len(unique)})
    elif tokenizer.vocab_size:
        usage, perplexity = usage_and_perplexity(counts)
        report.update({
            "vocab_size": tokenizer.vocab_size,
            "codebook_usage": float(usage),
            "perplexity": float(perplexity),
            # With n tokens drawn uniformly from K codes, only K(1 - exp(-n/K)) distinct codes are expected.
            "codebook_usage_uniform_bound": float(1 - math.exp(-tokens / tokenizer.vocab_size)),
        })
    if baselines and report["bits_per_pixel"] > 0:
        for name, result in (("jpeg", jpeg_at_bpp(kept, report["bits_per_pixel"])),
                             ("patch_mean", patch_mean_at_bpp(kept, report["bits_per_pixel"]))):
            report[name] = {"psnr": result.psnr, "bits_per_pixel": result.bits_per_pixel, "setting": result.setting}
        report["psnr_margin_over_patch_mean"] = report["psnr"] - report["patch_mean"]["psnr"]
        report["psnr_margin_over_jpeg"] = report["psnr"] - report["jpeg"]["psnr"]
    return report, originals, reconstructions


def evaluate_to_dir(
    tokenizer: Tokenizer,
    images: Iterable[dict[str, Any]],
    out_dir: Path,
    max_images: int | None = None,
    baselines: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run :func:`evaluate` and write ``report.json`` and ``reconstructions.png`` into ``out_dir``."""
    tokenizer.eval()
    report, originals, reconstructions = evaluate(tokenizer, images, max_images=max_images, baselines=baselines)
    report.update(extra or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_path = out_dir / "reconstructions.png"
    image_grid(torch.stack([_tile(x) for x in originals]), torch.stack([_tile(x) for x in reconstructions])).save(grid_path)
    report_path = out_dir / "report.json"
    report["report_path"], report["reconstructions_path"] = str(report_path), str(grid_path)
    report_path.write_text(json.dumps(report, indent=2))
    return report


def _tile(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` -> ``(3, GRID_SIZE, GRID_SIZE)``: centre square, resized."""
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    square = image[:, top : top + side, left : left + side]
    return F.interpolate(square[None], size=(GRID_SIZE, GRID_SIZE), mode="bilinear", antialias=True,
                         align_corners=False)[0]
