"""Flexible-length tokenizers: quality against token count, and the per-image adaptive budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtok.distributed import gather_list
from vtok.tokenizers import Tokenizer
from vtok.tokenizers.nested_dropout import budget_ladder

from .metrics import psnr


class TokenBudgetMeter:
    """Accumulates, batch by batch, PSNR at ``k = 1, 2, 4, ..., K`` tokens and the adaptive ``k`` per image.

    Args:
        tokenizer: a flexible 1D tokenizer (``tokenizer.flexible``).
        target_psnr: also pick, per image, the fewest tokens reaching this PSNR (``encode(target_psnr=...)``).
        sampling: ``decode`` keyword arguments of a generative decoder (steps, guidance, seed, solver).
    """

    def __init__(self, tokenizer: Tokenizer, target_psnr: float | None = None,
                 sampling: dict[str, Any] | None = None) -> None:
        self.tokenizer, self.target_psnr = tokenizer, target_psnr
        self.sampling = sampling or {}  # a generative decoder's sampler settings for every decode
        self.ladder = budget_ladder(tokenizer.num_tokens())
        self.psnr: dict[int, list[float]] = {k: [] for k in self.ladder}
        self.adaptive_tokens: list[int] = []
        self.adaptive_psnr: list[float] = []

    @torch.no_grad()
    def update(self, images: Tensor, condition: Tensor | None = None) -> None:
        """``(B, 3, H, W)`` images in ``[-1, 1]`` at the tokenizer's resolution (and their caption embeddings for
        a conditioned tokenizer)."""
        full = self.tokenizer.encode(images, text=condition)
        for k in self.ladder:
            lengths = torch.full((len(images),), k, device=images.device)
            reconstruction = self.tokenizer.decode(replace(full, lengths=lengths), **self.sampling).clamp(-1, 1)
            self.psnr[k] += psnr(reconstruction, images).tolist()
        if self.target_psnr is not None:
            tokens = self.tokenizer.encode(images, target_psnr=self.target_psnr, text=condition)
            self.adaptive_tokens += tokens.lengths.tolist()
            self.adaptive_psnr += psnr(self.tokenizer.decode(tokens, **self.sampling).clamp(-1, 1), images).tolist()

    def gather(self) -> None:
        """Join every rank's values, in rank order (all ranks call this; a no-op in one process)."""
        self.psnr = {k: gather_list(v) for k, v in self.psnr.items()}
        self.adaptive_tokens = gather_list(self.adaptive_tokens)
        self.adaptive_psnr = gather_list(self.adaptive_psnr)

    def report(self) -> dict[str, Any]:
        """``{"psnr_vs_tokens": {k: mean PSNR}, "adaptive_tokens": {...}}`` (the latter with a target)."""
        out: dict[str, Any] = {"psnr_vs_tokens": {str(k): float(np.mean(v)) for k, v in self.psnr.items()}}
        if self.target_psnr is not None:
            k = np.asarray(self.adaptive_tokens, dtype=float)
            out["adaptive_tokens"] = {
                "target_psnr": self.target_psnr, "mean": float(k.mean()), "std": float(k.std()),
                "min": int(k.min()), "max": int(k.max()), "psnr": float(np.mean(self.adaptive_psnr)),
            }
        return out


def plot_quality_vs_tokens(psnr_vs_tokens: dict[str, float], path: Path) -> Path:
    """Write PSNR against token count (log-2 axis) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in psnr_vs_tokens]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(ks, list(psnr_vs_tokens.values()), marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("tokens per image")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
