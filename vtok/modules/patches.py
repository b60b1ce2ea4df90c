"""Patch tokens shared by the ViT and 1D latent-token families: their positions, and patches back to pixels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .transformer import LearnedGridPositions, grid_positions, rope_2d

POSITIONS = ("learned", "rope")


class PatchPositions(nn.Module):
    """Adds positions to ``(B, h*w, width)`` patch tokens: a learned table, or rotary angles for attention."""

    def __init__(self, kind: str, grid: tuple[int, int], width: int, head_dim: int) -> None:
        super().__init__()
        if kind not in POSITIONS:
            raise ValueError(f"unknown position kind {kind!r}; choose one of {list(POSITIONS)}")
        self.kind, self.head_dim = kind, head_dim
        self.table = LearnedGridPositions(grid, width) if kind == "learned" else None

    def forward(self, tokens: Tensor, grid: tuple[int, int], extra_before: int = 0,
                extra_after: int = 0) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Returns ``(tokens + table, None)`` or ``(tokens, rope)``; rope covers ``extra`` non-spatial tokens too."""
        if self.table is not None:
            return tokens + self.table(*grid).to(tokens.dtype), None
        positions = grid_positions(*grid, device=tokens.device)
        zeros = positions.new_zeros
        positions = torch.cat([zeros(extra_before, 2), positions, zeros(extra_after, 2)])
        return tokens, rope_2d(positions, self.head_dim)


def unpatchify(patches: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """``(B, h*w, C*p*p)`` -> ``(B, C, h*p, w*p)`` (channel-major within a patch, as ``PixelShuffle`` orders it)."""
    batch = patches.shape[0]
    return nn.functional.pixel_shuffle(patches.transpose(1, 2).reshape(batch, -1, *grid), patch_size)
