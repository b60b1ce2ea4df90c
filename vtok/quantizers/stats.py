"""Codebook statistics: usage and perplexity from index counts, computed with ``bincount``."""

from __future__ import annotations

import torch
from torch import Tensor


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

    Kept as a ring of per-batch count vectors (``window x K`` floats); cheap for codebooks up to a few
    hundred thousand entries.
    """

    def __init__(self, codebook_size: int, window: int = 100) -> None:
        self.codebook_size = codebook_size
        self.window = window
        self.ring: Tensor | None = None
        self.position = 0
        self.filled = 0

    def update(self, counts: Tensor) -> None:
        """Add one batch of ``(K,)`` counts."""
        if self.ring is None or self.ring.device != counts.device:
            self.ring = torch.zeros(self.window, self.codebook_size, device=counts.device)
            self.position = self.filled = 0
        self.ring[self.position] = counts
        self.position = (self.position + 1) % self.window
        self.filled = min(self.filled + 1, self.window)

    def counts(self) -> Tensor:
        """``(K,)`` counts summed over the window."""
        if self.ring is None:
            return torch.zeros(self.codebook_size)
        return self.ring[: self.filled].sum(0) if self.filled < self.window else self.ring.sum(0)
