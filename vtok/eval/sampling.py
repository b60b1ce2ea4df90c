"""Generative decoders: quality over seeds and over sampling steps, decode speed per step count, and a picture of
several seeds.

A flow decoder's reconstruction depends on the noise it starts from, so one PSNR says little: this measures, on
the first images of the set, PSNR / SSIM at each of several seeds (their spread is the decoder's own variance)
and at several step counts (the cost / quality trade-off), with images per second for each.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtok.distributed import gather_list
from vtok.modules.flow import SamplerSettings
from vtok.tokenizers import Tokenizer, Tokens

from .metrics import psnr, sharpness, ssim


class SamplingMeter:
    """Accumulates, on up to ``max_images`` images of this rank, PSNR / SSIM per seed and per step count.

    Args:
        tokenizer: a tokenizer with a generative decoder (``tokenizer.generative``).
        settings: the sampler settings the evaluation uses (the report's main figures).
        seeds: how many seeds (``settings.seed``, ``+1``, ...) to decode each image with.
        steps: step counts to compare (the settings' own is added).
        max_images: images of this rank measured (each costs ``seeds + len(steps)`` decodes).
        picture_images: images shown, one row per seed, in ``reconstructions_seeds.png``.
    """

    def __init__(self, tokenizer: Tokenizer, settings: SamplerSettings, seeds: int = 3,
                 steps: Sequence[int] = (1, 4, 16), max_images: int = 16, picture_images: int = 6) -> None:
        self.tokenizer, self.settings, self.max_images = tokenizer, settings, max_images
        self.seeds = [settings.seed + i for i in range(max(1, seeds))]
        self.steps = sorted({*steps, settings.steps})
        self.picture_images = picture_images
        self.count = 0
        self.by_seed: dict[int, dict[str, list[float]]] = {s: {"psnr": [], "ssim": [], "sharpness": []}
                                                           for s in self.seeds}
        self.by_steps: dict[int, dict[str, list[float]]] = {
            k: {"psnr": [], "ssim": [], "sharpness": [], "seconds": [0.0]} for k in self.steps}
        self.picture: list[Tensor] = []  # rows: originals, then one row per seed

    def _decode(self, tokens: Tokens, **changes: Any) -> Tensor:
        settings = dataclasses.replace(self.settings, **changes)
        return self.tokenizer.decode(tokens, **settings.to_dict()).clamp(-1, 1)

    @torch.no_grad()
    def update(self, images: Tensor, tokens: Tokens) -> None:
        """``(B, 3, H, W)`` images in ``[-1, 1]`` and their tokens (the evaluation's encode)."""
        keep = min(len(images), self.max_images - self.count)
        if keep <= 0:
            return
        images = images[:keep]
        tokens = _first(tokens, keep)
        shown = max(0, min(keep, self.picture_images - (self.picture[0].shape[0] if self.picture else 0)))
        rows = [images[:shown].cpu()]
        for seed in self.seeds:
            decoded = self._decode(tokens, seed=seed)
            self.by_seed[seed]["psnr"] += psnr(decoded, images).tolist()
            self.by_seed[seed]["ssim"] += ssim(decoded, images).tolist()
            self.by_seed[seed]["sharpness"] += sharpness(decoded, images).tolist()
            rows.append(decoded[:shown].cpu())
        if shown:
            self.picture = [torch.cat([old, new]) for old, new in zip(self.picture, rows)] if self.picture else rows
        for steps in self.steps:
            start = time.perf_counter()
            decoded = self._decode(tokens, steps=steps)
            if decoded.device.type == "cuda":
                torch.cuda.synchronize(decoded.device)
            self.by_steps[steps]["seconds"][0] += time.perf_counter() - start
            self.by_steps[steps]["psnr"] += psnr(decoded, images).tolist()
            self.by_steps[steps]["ssim"] += ssim(decoded, images).tolist()
            self.by_steps[steps]["sharpness"] += sharpness(decoded, images).tolist()
        self.count += keep

    def gather(self) -> None:
        """Join every rank's values (all ranks call this; a no-op in one process)."""
        for table in (self.by_seed, self.by_steps):
            for values in table.values():
                for key in values:
                    values[key] = gather_list(values[key])

    def report(self) -> dict[str, Any]:
        """``sampling``: the settings; ``psnr_over_seeds`` / ``ssim_over_seeds``: per-seed means and their spread;
        ``quality_vs_steps``: PSNR, SSIM, sharpness and images/s (one device) per step count."""
        per_seed_psnr = [float(np.mean(v["psnr"])) for v in self.by_seed.values()]
        per_seed_ssim = [float(np.mean(v["ssim"])) for v in self.by_seed.values()]
        n = len(next(iter(self.by_seed.values()))["psnr"])
        return {
            "sampling": self.settings.to_dict(),
            "sampling_images": n,
            "psnr_over_seeds": {"seeds": self.seeds, "per_seed": per_seed_psnr, "mean": float(np.mean(per_seed_psnr)),
                                "std": float(np.std(per_seed_psnr))},
            "ssim_over_seeds": {"seeds": self.seeds, "per_seed": per_seed_ssim, "mean": float(np.mean(per_seed_ssim)),
                                "std": float(np.std(per_seed_ssim))},
            "quality_vs_steps": {
                str(k): {"psnr": float(np.mean(v["psnr"])), "ssim": float(np.mean(v["ssim"])),
                         "sharpness": float(np.mean(v["sharpness"])),
                         "images_per_second": len(v["psnr"]) / max(sum(v["seconds"]), 1e-9)}
                for k, v in self.by_steps.items()},
        }


def _first(tokens: Tokens, count: int) -> Tokens:
    """The first ``count`` images' tokens."""
    def cut(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[:count]

    return dataclasses.replace(tokens, indices=cut(tokens.indices), latents=tokens.latents[:count],
                               lengths=cut(tokens.lengths), condition=cut(tokens.condition))
