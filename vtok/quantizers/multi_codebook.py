"""Multi-codebook quantization (as in UniTok): channels split into groups, each with a small codebook."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput
from .registry import QUANTIZERS


@QUANTIZERS.register("multi_codebook")
class MultiCodebookQuantizer(Quantizer):
    """Splits ``dim`` channels into ``groups`` chunks and quantizes each with its own quantizer.

    Args:
        dim: feature size, divisible by ``groups``.
        groups: number of sub-codebooks (tokens per position).
        quantizer: ``{"kind": ..., **kwargs}`` for every group (``dim`` is set to ``dim // groups``).

    Indices have shape ``(..., groups)``; ``codebook_size`` is one group's size, ``bits_per_token`` all groups'.
    """

    def __init__(self, dim: int, groups: int, quantizer: dict[str, Any]) -> None:
        super().__init__()

        if dim % groups:
            raise ValueError(f"dim={dim} is not divisible by groups={groups}")
        self.in_dim, self.out_dim, self.groups = dim, dim, groups
        self.parts = nn.ModuleList(QUANTIZERS.build({**quantizer, "dim": dim // groups}) for _ in range(groups))
        self.codebook_size = self.parts[0].codebook_size

    @property
    def bits_per_token(self) -> float:
        return self.groups * math.log2(self.codebook_size)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` -> quantized ``(..., dim)``, indices ``(..., groups)``."""
        outs = [part(chunk) for part, chunk in zip(self.parts, z.chunk(self.groups, dim=-1))]
        losses = {f"{k}_{i}": v for i, o in enumerate(outs) for k, v in o.losses.items()}
        stats = {f"{k}_{i}": v for i, o in enumerate(outs) for k, v in o.stats.items()}
        return QuantizerOutput(torch.cat([o.quantized for o in outs], -1), torch.stack([o.indices for o in outs], -1),
                               losses, stats)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(..., groups)`` ids -> ``(..., dim)``."""
        return torch.cat([part.indices_to_codes(indices[..., i]) for i, part in enumerate(self.parts)], -1)
