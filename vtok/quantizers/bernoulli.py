"""Bernoulli binary bottleneck (Instella-T2I): bits sampled from sigmoid probabilities while training."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput, fp32_forward
from .lfq import MAX_BITS, bits_to_indices, indices_to_bits
from .registry import QUANTIZERS


@QUANTIZERS.register("bernoulli")
class BernoulliQuantizer(Quantizer):
    """``p = sigmoid(z / temperature)``; training samples ``b ~ Bernoulli(p)``, inference thresholds ``p > 0.5``.

    The code is ``2b - 1`` with a straight-through gradient through ``p``; the auxiliary loss
    ``aux_weight * mean(p * (1 - p))`` pushes probabilities towards 0 or 1 so that training (sampled) and
    inference (thresholded) codes agree.

    Args:
        bits: bits per token (``codebook_size = 2^bits``), 1..64; 64-bit ids are the bits read as a
            two's-complement int64 (:func:`~vtok.quantizers.lfq.bits_to_indices`).
        dim: input feature size; projected to ``bits`` and back when different.
        temperature: sampling temperature (lower: sharper probabilities).
        aux_weight: weight of ``mean(p * (1 - p))``.
    """

    def __init__(self, bits: int, dim: int | None = None, temperature: float = 1.0, aux_weight: float = 0.1) -> None:
        super().__init__()
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits={bits}: use 1..{MAX_BITS} (a token id is one int64)")
        self.bits = bits
        self.in_dim = self.out_dim = dim or bits
        self.codebook_size = 2**bits
        self.temperature, self.aux_weight = temperature, aux_weight
        self.project_in = nn.Linear(self.in_dim, bits) if self.in_dim != bits else nn.Identity()
        self.project_out = nn.Linear(bits, self.out_dim) if self.out_dim != bits else nn.Identity()

    @fp32_forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` -> quantized ``(..., dim)``, indices ``(...)``."""
        p = torch.sigmoid(self.project_in(z) / self.temperature)
        bits = torch.bernoulli(p.detach()).bool() if self.training else p > 0.5
        hard = bits.float()
        code = 2 * (hard + (p - p.detach())) - 1  # value 2b - 1, gradient through p
        losses = {"binary": self.aux_weight * (p * (1 - p)).mean()} if self.training else {}
        stats = {"bit_imbalance": (2 * hard.reshape(-1, self.bits).mean(0) - 1).abs().mean(),
                 "mean_uncertainty": (p * (1 - p)).mean().detach()}
        quantized = self.project_out(code)
        return QuantizerOutput(quantized, bits_to_indices(bits), losses, stats)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` ids -> ``(..., dim)`` quantized features."""
        return self.project_out(indices_to_bits(indices, self.bits).float() * 2 - 1)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """``(..., bits)`` codes in ``{-1, 1}`` -> ids."""
        return bits_to_indices(codes > 0)
