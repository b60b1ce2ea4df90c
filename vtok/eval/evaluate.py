"""Evaluate a tokenizer on a set of images: quality, codebook statistics, rate, speed, and codec baselines.

Each rank measures its share of the images; per-image values, code counts and timings are gathered over DDP
ranks (rFID statistics are summed by torchmetrics), so the report is the same as one process over all images.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from vtok.quantizers.stats import usage_and_perplexity
from vtok.tokenizers import Tokenizer
from vtok.training.callbacks import image_grid

from .baselines import jpeg_at_bpp, patch_mean_at_bpp
from .fid import FIDMeter
from .metrics import psnr, ssim
from .token_budget import TokenBudgetMeter, plot_quality_vs_tokens

GRID_SIZE = 192  # side of each tile in reconstructions.png
MAX_HISTOGRAM = 2**24  # larger codebooks report the number of distinct codes instead of usage


@torch.no_grad()
def evaluate(
    tokenizer: Tokenizer,
    images: Iterable[dict[str, Any]],
    max_images: int | None = None,
    baselines: bool = True,
    baseline_max_images: int = 64,
    grid_images: int = 8,
    fid: FIDMeter | None = None,
    lpips: torch.nn.Module | None = None,
    target_psnr: float | None = None,
) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]:
    """Reconstruct each image and measure it.

    Args:
        tokenizer: the model, in eval mode.
        images: samples with ``image`` ``(3, H, W)`` or ``(B, 3, H, W)`` in ``[-1, 1]`` (this rank's share).
        max_images: stop after this many images (per rank).
        baselines: also run JPEG and the patch-mean tokenizer at the tokenizer's bits per pixel (on up to
            ``baseline_max_images`` images of rank 0: both search settings per image, which is slow).
        grid_images: how many originals/reconstructions to keep for the picture.
        fid: an rFID accumulator; ``None`` skips rFID.
        lpips: an LPIPS network ``(x, y) -> (B,)``; ``None`` skips LPIPS.
        target_psnr: for flexible 1D tokenizers, also report the per-image adaptive token count for this PSNR.

    Returns:
        ``(report, originals, reconstructions)``; the report holds per-set means (``psnr``, ``ssim``,
        ``bits_per_pixel``, ...), codebook statistics, rFID/LPIPS when asked, and the baselines.
    """
    device = next(tokenizer.parameters()).device
    values: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    originals, reconstructions, kept = [], [], []
    # A histogram only for codebooks that fit one (LFQ/BSQ may have 2^32 implicit codes).
    histogram = bool(tokenizer.vocab_size) and tokenizer.vocab_size <= MAX_HISTOGRAM
    counts = torch.zeros(tokenizer.vocab_size if histogram else 1, device=device, dtype=torch.float64)
    unique: set[int] = set()
    totals = {"images": 0, "pixels": 0, "tokens": 0, "encode_seconds": 0.0, "decode_seconds": 0.0}
    budget = TokenBudgetMeter(tokenizer, target_psnr) if tokenizer.flexible else None
    for sample in tqdm(images, desc="evaluating", unit="batch", disable=None):
        batch = sample["image"]
        batch = (batch[None] if batch.ndim == 3 else batch).to(device)
        start = time.perf_counter()
        encoded = tokenizer.encode(batch)
        _sync(device)
        totals["encode_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        decoded = tokenizer.decode(encoded).clamp(-1, 1)
        _sync(device)
        totals["decode_seconds"] += time.perf_counter() - start
        values["psnr"] += psnr(decoded, batch).tolist()
        values["ssim"] += ssim(decoded, batch).tolist()
        if lpips is not None:
            values["lpips"] += lpips(decoded, batch).tolist()
        if fid is not None:
            fid.update(batch, decoded)
        if budget is not None:
            budget.update(batch)
        if encoded.indices is not None and histogram:
            counts += torch.bincount(encoded.indices.reshape(-1), minlength=counts.numel()).double()
        elif encoded.indices is not None:
            unique.update(encoded.indices.reshape(-1).tolist())
        totals["images"] += batch.shape[0]
        totals["tokens"] += math.prod(encoded.layout) * batch.shape[0]
        totals["pixels"] += batch.shape[0] * batch.shape[2] * batch.shape[3]
        for original, reconstruction in zip(batch, decoded):
            if len(kept) < baseline_max_images:
                kept.append(original.cpu())
            if len(originals) < grid_images:
                originals.append(original.cpu())
                reconstructions.append(reconstruction.cpu())
        if max_images is not None and totals["images"] >= max_images:
            break

    # Gather this rank's share with the others'.
    values = {k: _gather_list(v) for k, v in values.items()}
    totals = {k: sum(_gather_list([v])) for k, v in totals.items()}
    if not totals["images"]:
        raise ValueError("evaluation set is empty")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    unique = set().union(*_gather_list([unique]))

    bits_per_token = tokenizer.bits_per_token
    n = totals["images"]
    report: dict[str, Any] = {
        "num_images": n,
        "psnr": float(np.mean(values["psnr"])),
        "ssim": float(np.mean(values["ssim"])),
        "lpips": float(np.mean(values["lpips"])) if values["lpips"] else None,
        "rfid": fid.compute() if fid is not None else None,
        "psnr_per_image": values["psnr"],
        "tokens_per_image": totals["tokens"] / n,
        "bits_per_token": bits_per_token,
        "bits_per_image": totals["tokens"] * bits_per_token / n,
        "bits_per_pixel": totals["tokens"] * bits_per_token / totals["pixels"],  # bits_per_token covers every code
        # Per-rank seconds summed: images/s of one device.
        "encode_images_per_second": n / max(totals["encode_seconds"], 1e-9),
        "decode_images_per_second": n / max(totals["decode_seconds"], 1e-9),
        "vocab_size": tokenizer.vocab_size,
    }
    if tokenizer.vocab_size and not histogram:
        report["unique_codes"] = len(unique)
    elif tokenizer.vocab_size:
        usage, perplexity = usage_and_perplexity(counts.float())
        p = counts[counts > 0] / counts.sum()
        report.update({
            "codebook_usage": float(usage),
            "perplexity": float(perplexity),
            "entropy_bits": float(-(p * p.log2()).sum()),
            # With n tokens drawn uniformly from K codes, only K(1 - exp(-n/K)) distinct codes are expected.
            "codebook_usage_uniform_bound": float(1 - math.exp(-totals["tokens"] / tokenizer.vocab_size)),
        })
    if budget is not None:
        budget.psnr = {k: _gather_list(v) for k, v in budget.psnr.items()}
        budget.adaptive_tokens = _gather_list(budget.adaptive_tokens)
        budget.adaptive_psnr = _gather_list(budget.adaptive_psnr)
        report.update(budget.report())
    if baselines and report["bits_per_pixel"] > 0 and kept and _rank() == 0:
        for name, result in (("jpeg", jpeg_at_bpp(kept, report["bits_per_pixel"])),
                             ("patch_mean", patch_mean_at_bpp(kept, report["bits_per_pixel"]))):
            report[name] = {"psnr": result.psnr, "bits_per_pixel": result.bits_per_pixel, "setting": result.setting,
                            "num_images": len(kept)}
        # Margins on the images the baselines saw: rank 0's first images, which lead the gathered list.
        ours = float(np.mean(values["psnr"][: len(kept)]))
        report["psnr_margin_over_patch_mean"] = ours - report["patch_mean"]["psnr"]
        report["psnr_margin_over_jpeg"] = ours - report["jpeg"]["psnr"]
    return report, originals, reconstructions


def evaluate_to_dir(
    tokenizer: Tokenizer,
    images: Iterable[dict[str, Any]],
    out_dir: Path,
    max_images: int | None = None,
    baselines: bool = True,
    extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run :func:`evaluate` and write ``report.json``, ``reconstructions.png`` (and for flexible tokenizers
    ``quality_vs_tokens.png``) into ``out_dir``; ``kwargs`` go to :func:`evaluate`. Rank 0 writes."""
    tokenizer.eval()
    report, originals, reconstructions = evaluate(tokenizer, images, max_images=max_images, baselines=baselines,
                                                  **kwargs)
    report.update(extra or {})
    if _rank() != 0:
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_path = out_dir / "reconstructions.png"
    image_grid(torch.stack([_tile(x) for x in originals]), torch.stack([_tile(x) for x in reconstructions])).save(grid_path)
    report["reconstructions_path"] = str(grid_path)
    if "psnr_vs_tokens" in report:
        report["quality_vs_tokens_path"] = str(plot_quality_vs_tokens(report["psnr_vs_tokens"],
                                                                      out_dir / "quality_vs_tokens.png"))
    report_path = out_dir / "report.json"
    report["report_path"] = str(report_path)
    report_path.write_text(json.dumps(report, indent=2))
    return report


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_list(values: list) -> list:
    """Concatenate a list over ranks (rank order); the list itself without DDP."""
    if _world() == 1:
        return list(values)
    gathered: list[list] = [None] * _world()  # type: ignore[list-item]
    dist.all_gather_object(gathered, list(values))
    return [v for part in gathered for v in part]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tile(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` -> ``(3, GRID_SIZE, GRID_SIZE)``: centre square, resized."""
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    square = image[:, top : top + side, left : left + side]
    return F.interpolate(square[None], size=(GRID_SIZE, GRID_SIZE), mode="bilinear", antialias=True,
                         align_corners=False)[0]
