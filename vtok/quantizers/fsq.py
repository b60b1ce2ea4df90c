"""Finite scalar quantization (FSQ): each channel rounded to one of a few levels; the codebook is implicit."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput, fp32_forward
from .registry import QUANTIZERS
from .stats import HISTOGRAM_MAX_CODES, code_counts, usage_and_perplexity


def round_ste(x: Tensor) -> Tensor:
    """Round with a straight-through (identity) gradient."""
    return x + (x.round() - x).detach()


@QUANTIZERS.register("fsq")
class FSQ(Quantizer):
    """Bound each of ``len(levels)`` channels with tanh and round it to ``levels[i]`` values.

    Args:
        levels: values per channel, e.g. ``[8, 8, 8, 5, 5, 5]`` (64,000 codes).
        dim: input feature size; projected to ``len(levels)`` channels and back when different.

    Codes are in ``[-1, 1]`` per channel; ``codebook_size = prod(levels)``.
    """

    def __init__(self, levels: Sequence[int], dim: int | None = None) -> None:
        super().__init__()
        self.levels = list(levels)
        self.in_dim = self.out_dim = dim or len(self.levels)
        self.codebook_size = math.prod(self.levels)
        d = len(self.levels)
        self.project_in = nn.Linear(self.in_dim, d) if self.in_dim != d else nn.Identity()
        self.project_out = nn.Linear(d, self.out_dim) if self.out_dim != d else nn.Identity()
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor([1, *self.levels[:-1]], dtype=torch.long), 0)
        self.register_buffer("_basis", basis, persistent=False)

    def _bound(self, z: Tensor) -> Tensor:
        half = (self._levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    @fp32_forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` -> quantized ``(..., dim)``, indices ``(...)``. No auxiliary loss."""
        bounded = self._bound(self.project_in(z))
        levels = round_ste(bounded)  # integers centred on 0
        half_width = (self._levels // 2)
        codes = levels / half_width
        indices = self._levels_to_indices(levels.detach())
        usage, perplexity = usage_and_perplexity(code_counts(indices, self.codebook_size)) \
            if self.codebook_size <= HISTOGRAM_MAX_CODES else (torch.tensor(float("nan")), torch.tensor(float("nan")))
        quantized = self.project_out(codes)
        return QuantizerOutput(quantized, indices, {}, {"usage_batch": usage, "perplexity": perplexity})

    def _levels_to_indices(self, levels: Tensor) -> Tensor:
        shifted = (levels + self._levels // 2).round().long()  # 0 .. L-1 per channel
        return (shifted * self._basis).sum(-1)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """``(..., len(levels))`` codes in ``[-1, 1]`` (as in ``indices_to_codes`` before projection) -> ids."""
        return self._levels_to_indices(codes * (self._levels // 2))

    def indices_to_levels(self, indices: Tensor) -> Tensor:
        """``(...)`` ids -> ``(..., len(levels))`` codes in ``[-1, 1]`` (before the output projection)."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels.long()
        return (digits - self._levels.long() // 2).float() / (self._levels // 2)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` ids -> ``(..., dim)`` quantized features."""
        return self.project_out(self.indices_to_levels(indices))
