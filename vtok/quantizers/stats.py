"""Codebook statistics: usage and perplexity from index counts, computed with ``bincount``.

One threshold decides where a full histogram of code counts is kept, for every quantizer, the trainer's usage
window and evaluation alike: :data:`HISTOGRAM_MAX_CODES`. Larger implicit codebooks (LFQ/BSQ with many bits)
report the number of distinct codes instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

HISTOGRAM_MAX_CODES = 2**20  # a (K,) float64 histogram of 8 MiB at most


def has_histogram(codebook_size: int | None) -> bool:
    """Whether code counts are kept as a dense histogram for a codebook of this size."""
    return bool(codebook_size) and codebook_size <= HISTOGRAM_MAX_CODES


def code_counts(indices: Tensor, codebook_size: int) -> Tensor:
    """``(...)`` long indices -> ``(codebook_size,)`` float counts."""
    return torch.bincount(indices.reshape(-1), minlength=codebook_size).float()


def usage_and_perplexity(counts: Tensor) -> tuple[Tensor, Tensor]:
    """``(K,)`` counts -> (fraction of codes used at least once, perplexity ``exp(H)`` of the distribution)."""
    total = counts.sum().clamp_min(1.0)
    probs = counts / total
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    usage = (counts > 0).float().mean()
    return usage, entropy.exp()


class UsageWindow:
    """Counts of each code over the last ``window`` batches, for usage that does not depend on batch size.

    Keeps one dense ``(K,)`` running total and, per batch, only the codes it used with their counts, so memory
    is ``K`` plus the batches' distinct codes, not ``window x K``.
    """

    def __init__(self, codebook_size: int, window: int = 100) -> None:
        self.codebook_size = codebook_size
        self.window = window
        self.total: Tensor | None = None
        self.ring: list[tuple[Tensor, Tensor]] = []

    def update(self, counts: Tensor) -> None:
        """Add one batch of ``(K,)`` counts."""
        if self.total is None or self.total.device != counts.device:
            self.total = torch.zeros(self.codebook_size, device=counts.device, dtype=torch.float64)
            self.ring = []
        used = counts.nonzero().flatten()
        batch = (used, counts[used].double())
        self.total.index_add_(0, *batch)
        self.ring.append(batch)
        if len(self.ring) > self.window:
            expired_codes, expired_counts = self.ring.pop(0)
            self.total.index_add_(0, expired_codes, -expired_counts)

    def counts(self) -> Tensor:
        """``(K,)`` counts summed over the window."""
        if self.total is None:
            return torch.zeros(self.codebook_size)
        return self.total.clamp_min(0).float()
