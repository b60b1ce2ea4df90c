"""Residual quantization (RVQ / residual FSQ): each stage quantizes what the previous stages left."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import Quantizer, QuantizerOutput
from .registry import QUANTIZERS


@QUANTIZERS.register("residual")
class ResidualQuantizer(Quantizer):
    """``depth`` stages of one quantizer kind applied to successive residuals; codes add up.

    Args:
        dim: feature size.
        depth: number of stages (tokens per position).
        quantizer: ``{"kind": "vq" | "fsq" | ..., **kwargs}`` of every stage (``dim`` is filled in).
        stage_scale: stage ``i`` quantizes ``residual / stage_scale**i`` and its codes are scaled back; below 1
            lets bounded quantizers (FSQ's codes lie in ``[-1, 1]``) resolve ever smaller residuals.

    Indices have shape ``(..., depth)``; ``codebook_size`` is the size of one stage's codebook and
    ``bits_per_token`` counts all stages of a position.
    """

    def __init__(self, dim: int, depth: int, quantizer: dict[str, Any], stage_scale: float = 1.0) -> None:
        super().__init__()

        self.in_dim, self.out_dim, self.depth = dim, dim, depth
        self.stages = nn.ModuleList(QUANTIZERS.build({**quantizer, "dim": dim}) for _ in range(depth))
        self.codebook_size = self.stages[0].codebook_size
        self.scales = [stage_scale**i for i in range(depth)]

    @property
    def bits_per_token(self) -> float:
        return self.depth * math.log2(self.codebook_size)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """``(..., dim)`` -> quantized ``(..., dim)``, indices ``(..., depth)``."""
        residual, quantized = z, None
        indices, losses, stats = [], {}, {}
        for i, (stage, scale) in enumerate(zip(self.stages, self.scales)):
            # straight-through inside the stage; its parameters get gradient (scale 1 skips two full passes)
            out = stage(residual if scale == 1 else residual / scale)
            code = out.quantized if scale == 1 else out.quantized * scale
            if i + 1 < self.depth:
                residual = residual - code.detach()
            quantized = code if quantized is None else quantized + code
            indices.append(out.indices)
            losses.update({f"{name}_{i}": value for name, value in out.losses.items()})
            stats.update({f"{name}_{i}": value for name, value in out.stats.items()})
        return QuantizerOutput(quantized, torch.stack(indices, -1), losses, stats)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(..., depth)`` ids -> ``(..., dim)`` summed codes."""
        return sum(stage.indices_to_codes(indices[..., i]) * scale
                   for i, (stage, scale) in enumerate(zip(self.stages, self.scales)))
