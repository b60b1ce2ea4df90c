"""Evaluate a tokenizer on a set of images: quality, codebook statistics, rate, speed, and codec baselines.

Three steps: :class:`EvaluationMeter` accumulates one rank's share batch by batch, ``gather()`` joins the ranks'
shares (per-image values, code counts, timings; rFID statistics are summed by torchmetrics), and ``summary()``
turns them into the report, the same as one process over all images would write.
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
from torch import Tensor
from tqdm import tqdm

from vtok.distributed import all_reduce_sum, gather_list, local_only, rank, rank_and_world_size, rank_share
from vtok.images import image_grid, square_tile
from vtok.losses import LossTerm
from vtok.quantizers.stats import has_histogram, usage_and_perplexity
from vtok.teachers import TextEncoder
from vtok.tokenizers import Tokenizer

from .baselines import jpeg_at_bpp, patch_mean_at_bpp
from .fid import FIDMeter
from .metrics import depth_errors, psnr, sharpness, ssim
from .sampling import SamplingMeter
from .semantic import TermMeter
from .token_budget import TokenBudgetMeter, plot_quality_vs_tokens

GRID_SIZE = 192  # side of each tile in reconstructions.png


class EvaluationMeter:
    """One rank's running measurements of a tokenizer.

    Args:
        tokenizer: the model, in eval mode.
        fid: an rFID accumulator; ``None`` skips rFID.
        lpips: an LPIPS network ``(x, y) -> (B,)``; ``None`` skips LPIPS.
        target_psnr: for flexible 1D tokenizers, also the per-image adaptive token count for this PSNR.
        keep_images: originals kept for the codec baselines (their quality search runs per image).
        grid_images: originals and reconstructions kept for the picture.
        sampling: for a generative decoder, ``{"steps", "guidance", "seed", "solver"}`` overriding the tokenizer's
            defaults where not ``None``, and ``seeds``, ``compare_steps``, ``images`` for :class:`SamplingMeter`.
        max_depth: one-channel depth maps: metres at ``+1``, for depth errors in metres (``None``: no depth errors).
    """

    def __init__(self, tokenizer: Tokenizer, fid: FIDMeter | None = None, lpips: torch.nn.Module | None = None,
                 target_psnr: float | None = None, keep_images: int = 64, grid_images: int = 8,
                 sampling: dict[str, Any] | None = None, max_depth: float | None = None) -> None:
        self.tokenizer, self.fid, self.lpips, self.max_depth = tokenizer, fid, lpips, max_depth
        sampling = dict(sampling or {})
        settings = tokenizer.sampler_settings(**{k: sampling.get(k) for k in ("steps", "guidance", "seed", "solver")}
                                              if tokenizer.generative else {})
        self.decode_kwargs = settings.to_dict() if settings is not None else {}
        self.sampling = SamplingMeter(tokenizer, settings, sampling.get("seeds", 3),
                                      sampling.get("compare_steps", (1, 4, 16)), sampling.get("images", 16)
                                      ) if settings is not None else None
        self.device = next(tokenizer.parameters()).device
        self.keep_images, self.grid_images = keep_images, grid_images
        self.values: dict[str, list[float]] = {"psnr": [], "ssim": [], "sharpness": [], "lpips": [], "tokens": [],
                                               "abs_rel": [], "rmse": [], "delta1": []}
        self.totals = {"images": 0, "pixels": 0, "tokens": 0, "encode_seconds": 0.0, "decode_seconds": 0.0}
        self.histogram = has_histogram(tokenizer.vocab_size)
        self.counts = torch.zeros(tokenizer.vocab_size if self.histogram else 1, device=self.device,
                                  dtype=torch.float64)
        self.unique: set[int] = set()
        self.budget = TokenBudgetMeter(tokenizer, target_psnr, self.decode_kwargs) if tokenizer.flexible else None
        self.kept: list[Tensor] = []
        self.originals: list[Tensor] = []
        self.reconstructions: list[Tensor] = []

    @torch.no_grad()
    def update(self, batch: Tensor, condition: Tensor | None = None) -> None:
        """Measure one ``(B, 3, H, W)`` batch in ``[-1, 1]`` (``condition``: its ``(B, D)`` caption embeddings,
        for a caption-conditioned tokenizer)."""
        batch = batch.to(self.device)
        start = time.perf_counter()
        encoded = self.tokenizer.encode(batch, text=condition)
        _sync(self.device)
        self.totals["encode_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        decoded = self.tokenizer.decode(encoded, **self.decode_kwargs).clamp(-1, 1)
        _sync(self.device)
        self.totals["decode_seconds"] += time.perf_counter() - start
        self.values["psnr"] += psnr(decoded, batch).tolist()
        self.values["ssim"] += ssim(decoded, batch).tolist()
        self.values["sharpness"] += sharpness(decoded, batch).tolist()
        if self.lpips is not None:
            self.values["lpips"] += self.lpips(decoded, batch).tolist()
        if self.max_depth is not None:
            for name, values in depth_errors(decoded, batch, self.max_depth).items():
                self.values[name] += values.tolist()
        if self.fid is not None:
            self.fid.update(batch, decoded)
        if self.budget is not None:
            self.budget.update(batch, condition)
        if self.sampling is not None:
            self.sampling.update(batch, encoded)
        if encoded.indices is not None and self.histogram:
            self.counts += torch.bincount(encoded.indices.reshape(-1), minlength=self.counts.numel()).double()
        elif encoded.indices is not None:
            self.unique.update(encoded.indices.reshape(-1).tolist())
        self.totals["images"] += batch.shape[0]
        kept = encoded.lengths.tolist() if encoded.lengths is not None else [math.prod(encoded.layout)] * len(batch)
        self.values["tokens"] += [float(k) for k in kept]  # per image: dynamic and budgeted tokenizers vary
        self.totals["tokens"] += int(sum(kept))
        self.totals["pixels"] += batch.shape[0] * batch.shape[2] * batch.shape[3]
        for original, reconstruction in zip(batch, decoded):
            if len(self.kept) < self.keep_images:
                self.kept.append(original.cpu())
            if len(self.originals) < self.grid_images:
                self.originals.append(original.cpu())
                self.reconstructions.append(reconstruction.cpu())

    def gather(self) -> None:
        """Join every rank's measurements (all ranks call this; a no-op in one process)."""
        self.values = {k: gather_list(v) for k, v in self.values.items()}
        self.totals = {k: sum(gather_list([v])) for k, v in self.totals.items()}
        all_reduce_sum(self.counts)
        self.unique = set().union(*gather_list([self.unique]))
        if self.budget is not None:
            self.budget.gather()
        if self.sampling is not None:
            self.sampling.gather()

    def summary(self) -> dict[str, Any]:
        """The report's measurements: per-set means, codebook statistics, rate and speed."""
        n = self.totals["images"]
        if not n:
            raise ValueError("evaluation set is empty")
        tokenizer, bits_per_token = self.tokenizer, self.tokenizer.bits_per_token
        report: dict[str, Any] = {
            "num_images": n,
            "psnr": float(np.mean(self.values["psnr"])),
            "ssim": float(np.mean(self.values["ssim"])),
            # high-frequency energy of reconstructions over originals' (1: as detailed; < 1: blurred)
            "sharpness": float(np.mean(self.values["sharpness"])),
            "lpips": float(np.mean(self.values["lpips"])) if self.values["lpips"] else None,
            "rfid": self.fid.compute() if self.fid is not None else None,
            "psnr_per_image": self.values["psnr"],
            **({"depth": {"max_depth": self.max_depth,
                          **{k: float(np.mean(self.values[k])) for k in ("abs_rel", "rmse", "delta1")}}}
               if self.values["abs_rel"] else {}),
            "tokens_per_image": self.totals["tokens"] / n,
            "tokens_per_image_spread": {"std": float(np.std(self.values["tokens"])),
                                        "min": int(min(self.values["tokens"])), "max": int(max(self.values["tokens"]))},
            "bits_per_token": bits_per_token,
            "bits_per_image": self.totals["tokens"] * bits_per_token / n,
            "bits_per_pixel": self.totals["tokens"] * bits_per_token / self.totals["pixels"],
            # Per-rank seconds summed: images/s of one device.
            "encode_images_per_second": n / max(self.totals["encode_seconds"], 1e-9),
            "decode_images_per_second": n / max(self.totals["decode_seconds"], 1e-9),
            "vocab_size": tokenizer.vocab_size,
        }
        if tokenizer.vocab_size and not self.histogram:
            report["unique_codes"] = len(self.unique)
        elif tokenizer.vocab_size:
            usage, perplexity = usage_and_perplexity(self.counts.float())
            p = self.counts[self.counts > 0] / self.counts.sum()
            report.update({
                "codebook_usage": float(usage),
                "perplexity": float(perplexity),
                "entropy_bits": float(-(p * p.log2()).sum()),
                # With n tokens drawn uniformly from K codes, only K(1 - exp(-n/K)) distinct codes are expected.
                "codebook_usage_uniform_bound": float(1 - math.exp(-self.totals["tokens"] / tokenizer.vocab_size)),
            })
        if self.budget is not None:
            report.update(self.budget.report())
        if self.sampling is not None:
            report.update(self.sampling.report())
        return report

    def baselines(self, report: dict[str, Any]) -> dict[str, Any]:
        """JPEG and the patch-mean tokenizer at the report's bits per pixel, on this rank's kept images."""
        out: dict[str, Any] = {}
        for name, result in (("jpeg", jpeg_at_bpp(self.kept, report["bits_per_pixel"])),
                             ("patch_mean", patch_mean_at_bpp(self.kept, report["bits_per_pixel"]))):
            out[name] = {"psnr": result.psnr, "bits_per_pixel": result.bits_per_pixel, "setting": result.setting,
                         "num_images": len(self.kept)}
        # Margins on the images the baselines saw: rank 0's first images, which lead the gathered list.
        ours = float(np.mean(report["psnr_per_image"][: len(self.kept)]))
        out["psnr_margin_over_patch_mean"] = ours - out["patch_mean"]["psnr"]
        out["psnr_margin_over_jpeg"] = ours - out["jpeg"]["psnr"]
        return out


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
    text_encoder: TextEncoder | None = None,
    terms: dict[str, LossTerm] | None = None,
    sampling: dict[str, Any] | None = None,
    max_depth: float | None = None,
) -> tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor]]:
    """Reconstruct each image and measure it.

    Args:
        tokenizer: the model, in eval mode.
        images: samples with ``image`` ``(3, H, W)`` or ``(B, 3, H, W)`` in ``[-1, 1]`` (this rank's share).
        max_images: stop after this many images (over all ranks: each stops after its share).
        baselines: also run JPEG and the patch-mean tokenizer at the tokenizer's bits per pixel (on up to
            ``baseline_max_images`` images of rank 0: both search settings per image, which is slow).
        grid_images: how many originals/reconstructions to keep for the picture.
        fid, lpips, target_psnr: see :class:`EvaluationMeter`.
        text_encoder: embeds the samples' ``caption`` for a caption-conditioned tokenizer and for ``terms``.
        terms: a run's semantic loss terms: adds their held-out figures (:mod:`vtok.eval.semantic`).
        sampling: a generative decoder's sampler settings and comparisons (see :class:`EvaluationMeter`).
        max_depth: depth maps (one channel): metres at ``+1``; adds ``depth`` (``abs_rel``, ``rmse`` in metres,
            ``delta1``) to the report. Codec baselines are for RGB and are skipped for one-channel images.

    Returns:
        ``(report, originals, reconstructions, seed_rows)``; the report holds per-set means (``psnr``, ``ssim``,
        ``bits_per_pixel``, ...), codebook statistics, rFID/LPIPS when asked, and the baselines; ``seed_rows``
        (generative decoders) are originals then one ``(n, 3, H, W)`` row per seed, else empty.
    """
    meter = EvaluationMeter(tokenizer, fid, lpips, target_psnr, keep_images=baseline_max_images,
                            grid_images=grid_images, sampling=sampling, max_depth=max_depth)
    semantic = TermMeter(tokenizer, terms or {})
    skipped: dict[str, int] = {}  # unusable samples by kind (undecodable, too_small, ...), left out of every metric
    if tokenizer.condition_dim is not None and text_encoder is None:
        raise ValueError("this tokenizer is conditioned on captions: evaluating it needs the run's text encoder "
                         "(evaluate after training, with evaluate=true)")
    if max_images is not None:
        max_images = len(rank_share(max_images, *rank_and_world_size()))
    for sample in tqdm(images, desc="evaluating", unit="batch", disable=None if rank() == 0 else True):
        if max_images is not None and meter.totals["images"] >= max_images:
            break
        for kind, count in (sample.get("skipped") or {}).items():
            skipped[kind] = skipped.get(kind, 0) + int(count)
        batch = sample["image"]
        if not batch.shape[0]:
            continue
        batch = (batch[None] if batch.ndim == 3 else batch).to(meter.device)
        captions = sample.get("caption")
        captions = [captions] if isinstance(captions, str) else captions
        text = text_encoder(list(captions)) if text_encoder is not None and captions is not None else None
        condition = text if tokenizer.condition_dim is not None else None
        if max_images is not None:  # a batch past this rank's share is cut, so the total is exact
            keep = max_images - meter.totals["images"]
            batch, captions = batch[:keep], None if captions is None else list(captions)[:keep]
            text, condition = (None if t is None else t[:keep] for t in (text, condition))
        with local_only():  # ranks' batch counts differ: they meet only in gather()
            meter.update(batch, condition)
            if semantic.active:
                semantic.update(batch, text, condition, captions)
    meter.gather()
    semantic.gather()
    report = meter.summary()
    totals: dict[str, int] = {}
    for part in gather_list([skipped]):
        for kind, count in part.items():
            totals[kind] = totals.get(kind, 0) + count
    report["skipped_samples"] = totals
    report.update(semantic.report())
    if baselines and report["bits_per_pixel"] > 0 and meter.kept and meter.kept[0].shape[0] == 3 and rank() == 0:
        report.update(meter.baselines(report))
    return report, meter.originals, meter.reconstructions, meter.sampling.picture if meter.sampling else []


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
    ``quality_vs_tokens.png``, for generative decoders ``reconstructions_seeds.png``) into ``out_dir``; ``kwargs``
    go to :func:`evaluate`. Rank 0 writes."""
    tokenizer.eval()
    report, originals, reconstructions, seed_rows = evaluate(tokenizer, images, max_images=max_images,
                                                             baselines=baselines, **kwargs)
    report.update(extra or {})
    if rank() != 0:
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_path = out_dir / "reconstructions.png"
    image_grid(torch.stack([square_tile(x, GRID_SIZE) for x in originals]),
               torch.stack([square_tile(x, GRID_SIZE) for x in reconstructions])).save(grid_path)
    report["reconstructions_path"] = str(grid_path)
    if seed_rows:  # a generative decoder: originals above one row per seed
        seeds_path = out_dir / "reconstructions_seeds.png"
        image_grid(*(torch.stack([square_tile(x, GRID_SIZE) for x in row]) for row in seed_rows)).save(seeds_path)
        report["reconstructions_seeds_path"] = str(seeds_path)
    if "psnr_vs_tokens" in report:
        report["quality_vs_tokens_path"] = str(plot_quality_vs_tokens(report["psnr_vs_tokens"],
                                                                      out_dir / "quality_vs_tokens.png"))
    report_path = out_dir / "report.json"
    report["report_path"] = str(report_path)
    report_path.write_text(json.dumps(report, indent=2))
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
