"""Lookup-free quantization (LFQ, MAGVIT-v2): the sign of each of ``bits`` channels is the code.

The implicit codebook has ``2^bits`` entries and is never materialised. Entropy losses use the factorisation
in :mod:`vtok.quantizers.entropy`: the per-sample term is exact at any size; the codebook term is exact (one
``2^{bits/2} x N x 2^{bits/2}`` product) up to ``exact_entropy_max_bits`` and the factorised upper bound
beyond (or always, if asked).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput, fp32_forward
from .entropy import codebook_entropy_exact, codebook_entropy_factorized, per_sample_entropy
from .registry import QUANTIZERS
from .stats import HISTOGRAM_MAX_CODES, code_counts, usage_and_perplexity

MAX_BITS = 64  # a token id is one int64


def _bit_weights(bits: int, device: torch.device) -> Tensor:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"{bits} bits per token: binary token ids are int64, so 1..{MAX_BITS} bits")
    # 2^i for i < 63; bit 63 is int64's sign bit (weight -2^63 in two's complement)
    return torch.ones(bits, dtype=torch.long, device=device).bitwise_left_shift(torch.arange(bits, device=device))


def bits_to_indices(bits: Tensor) -> Tensor:
    """``(..., d)`` booleans (bit ``i`` has weight ``2^i``) -> ``(...)`` int64 ids, ``d <= 64``.

    With 64 bits the id is the bit pattern read as a two's-complement int64: every pattern has its own id, and
    ids of tokens whose bit 63 is set are negative (``indices_to_bits`` reads them back exactly).
    """
    return (bits.long() * _bit_weights(bits.shape[-1], bits.device)).sum(-1)


def indices_to_bits(indices: Tensor, bits: int) -> Tensor:
    """``(...)`` int64 ids -> ``(..., bits)`` booleans (inverse of :func:`bits_to_indices`)."""
    return (indices.unsqueeze(-1) & _bit_weights(bits, indices.device)) != 0


@QUANTIZERS.register("lfq")
class LFQ(Quantizer):
    """Binary quantizer with entropy regularisation.

    Args:
        bits: code bits per token (``codebook_size = 2^bits``; up to 64: see :func:`bits_to_indices`).
        dim: input feature size; projected to ``bits`` and back when different.
        commitment_weight: weight of ``||z - sg(q)||^2`` (MAGVIT-v2: 0.25).
        entropy_weight: weight of ``E[H(p_n)] - diversity_gamma * H(E[p_n])`` (MAGVIT-v2: 0.1).
        diversity_gamma: weight of the codebook (batch) entropy inside the entropy loss.
        temperature: softmax temperature of the code distribution ``p_n(c) ~ exp(-||z_n - c||^2 / T)``.
        codebook_entropy: ``"auto"`` (exact up to ``exact_entropy_max_bits``, factorised beyond),
            ``"exact"`` or ``"factorized"``.
        exact_entropy_max_bits: largest ``bits`` for which ``auto`` is exact (18: a 2^18-entry table; the cost
            grows as ``2^bits``, see ``bench/RESULTS.md``).
        entropy_anneal_steps: the entropy weight starts at ``entropy_anneal_start`` times its value and
            reaches it linearly after this many training steps (0: constant).
        spherical: BSQ: project onto the unit sphere and use codes ``+-1/sqrt(bits)``.
    """

    def __init__(
        self,
        bits: int,
        dim: int | None = None,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        temperature: float = 0.01,
        codebook_entropy: str = "auto",
        exact_entropy_max_bits: int = 18,
        entropy_anneal_steps: int = 0,
        entropy_anneal_start: float = 3.0,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= bits <= MAX_BITS:
            raise ValueError(f"bits={bits}: use 1..{MAX_BITS} (a token id is one int64; 64 bits read as two's "
                             "complement)")
        if codebook_entropy not in ("auto", "exact", "factorized"):
            raise ValueError(f"codebook_entropy={codebook_entropy!r}: use auto, exact or factorized")
        self.bits = bits
        self.in_dim = self.out_dim = dim or bits
        self.codebook_size = 2**bits
        self.commitment_weight, self.entropy_weight = commitment_weight, entropy_weight
        self.diversity_gamma, self.temperature = diversity_gamma, temperature
        self.codebook_entropy = codebook_entropy
        self.exact_entropy_max_bits = exact_entropy_max_bits
        self.entropy_anneal_steps, self.entropy_anneal_start = entropy_anneal_steps, entropy_anneal_start
        self.spherical = spherical
        self.scale = 1 / math.sqrt(bits) if spherical else 1.0
        self.project_in = nn.Linear(self.in_dim, bits) if self.in_dim != bits else nn.Identity()
        self.project_out = nn.Linear(bits, self.out_dim) if self.out_dim != bits else nn.Identity()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def exact_codebook_entropy(self) -> bool:
        """Whether the codebook entropy term is computed exactly (else: factorised upper bound)."""
        if self.codebook_entropy == "auto":
            return self.bits <= self.exact_entropy_max_bits
        return self.codebook_entropy == "exact"

    def current_entropy_weight(self) -> float:
        if self.entropy_anneal_steps <= 0:
            return self.entropy_weight
        progress = min(1.0, float(self.steps) / self.entropy_anneal_steps)
        return self.entropy_weight * (self.entropy_anneal_start + (1 - self.entropy_anneal_start) * progress)

    @fp32_forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` -> quantized ``(..., dim)``, indices ``(...)``."""
        u = self.project_in(z)
        if self.spherical:
            u = F.normalize(u, dim=-1)
        positive = u > 0
        codes = torch.where(positive, self.scale, -self.scale)
        quantized = codes + (u - u.detach())  # value exactly the code, identity gradient
        indices = bits_to_indices(positive)

        losses: dict[str, Tensor] = {}
        flat = u.reshape(-1, self.bits)
        if self.training:
            self.steps += 1
            losses["commitment"] = self.commitment_weight * F.mse_loss(u, codes.detach())
            weight = self.current_entropy_weight()
            if weight > 0:
                # ||u - c||^2 differs by 4 * scale * u_i between c_i = +scale and c_i = -scale.
                logits = 4 * self.scale * flat / self.temperature
                sample_h = per_sample_entropy(logits)
                codebook_h = (codebook_entropy_exact(logits) if self.exact_codebook_entropy
                              else codebook_entropy_factorized(logits))
                losses["entropy"] = weight * (sample_h - self.diversity_gamma * codebook_h)
        stats = self._stats(positive.reshape(-1, self.bits), indices)
        quantized = self.project_out(quantized)
        return QuantizerOutput(quantized, indices, losses, stats)

    @torch.no_grad()
    def _stats(self, bits: Tensor, indices: Tensor) -> dict[str, Tensor]:
        ones = bits.float().mean(0)
        stats = {
            # 0 when every bit is on half the time, 1 when every bit is constant
            "bit_imbalance": (2 * ones - 1).abs().mean(),
            "unique_codes_batch": torch.tensor(float(torch.unique(indices).numel())),
        }
        if self.codebook_size <= HISTOGRAM_MAX_CODES:
            stats["usage_batch"], stats["perplexity"] = usage_and_perplexity(code_counts(indices, self.codebook_size))
        return stats

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(...)`` ids -> ``(..., dim)`` quantized features."""
        bits = indices_to_bits(indices, self.bits)
        return self.project_out(torch.where(bits, self.scale, -self.scale).float())

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """``(..., bits)`` codes (before the output projection) -> ids."""
        return bits_to_indices(codes > 0)
