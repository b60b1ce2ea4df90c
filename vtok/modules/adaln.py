"""Transformer blocks modulated by a timestep: adaptive layer norm (DiT's adaLN-Zero), for flow decoders.

Each block's layer norms have no affine weights; a per-image vector ``c`` (the timestep's embedding) sets their
shift and scale and gates each residual branch. The gates start at zero, so every block starts as the identity
and the model as the plain patch embedding, which keeps early flow training stable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .transformer import Attention, _init_weights


def timestep_features(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """``(B,)`` times in ``[0, 1]`` -> ``(B, dim)`` sinusoidal features (times scaled by 1000, as diffusion
    models number their steps, so the frequencies resolve small differences in ``t``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """``(B,)`` times -> ``(B, width)``: sinusoidal features through a two-layer MLP."""

    def __init__(self, width: int, features: int = 256) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_features(t, self.features).to(self.mlp[0].weight.dtype))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` for ``(B, N, D)`` tokens and ``(B, D)`` shift and scale."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms and residual gates are set by ``c`` ``(B, width)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``(B, N, dim)`` tokens, ``(B, dim)`` conditioning -> ``(B, N, dim)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class AdaLNTransformer(nn.Module):
    """``depth`` :class:`AdaLNBlock` s and a modulated final norm over ``(B, N, width)`` tokens."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(AdaLNBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.apply(_init_weights)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final_modulation[-1].weight)
        nn.init.zeros_(self.final_modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                keep: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        """``(B, N, width)``, ``(B, width)`` -> normalised ``(B, N, width)`` and ``{i: (B, N, width)}`` after
        block ``i`` for ``i in keep``."""
        kept = {}
        for index, block in enumerate(self.blocks):
            x = block(x, c, rope)
            if index in keep:
                kept[index] = x
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return modulate(self.norm(x), shift, scale), kept
