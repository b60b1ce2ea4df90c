"""ViT encoder and decoder on a 2D grid of patches (ViTok / MaskGIT-ViT style).

The encoder turns ``(B, C, H, W)`` images into ``(B, H/p, W/p, out_dim)`` features, one per ``p x p`` patch;
the decoder turns ``(B, h, w, in_dim)`` latents back into ``(B, C, h*p, w*p)`` images. Positions are learned
(a table resized for other grids) or 2D rotary (any grid as is).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vtok.modules.transformer import LearnedGridPositions, Transformer, grid_positions, patch_grid, rope_2d

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


class ViTEncoder(nn.Module):
    """Images ``(B, C, H, W)`` -> features ``(B, H/p, W/p, out_dim)``.

    Args:
        in_channels: image channels.
        patch_size: side ``p`` of a patch (one token per patch).
        width, depth, heads, mlp_ratio: transformer size.
        out_dim: feature size handed to the bottleneck.
        position: ``learned`` or ``rope``.
        image_size: training resolution (size of the learned position table).
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, width: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, out_dim: int = 256, position: str = "learned",
                 image_size: int = 256) -> None:
        super().__init__()
        self.patch_size, self.out_dim = patch_size, out_dim
        self.to_tokens = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.positions = PatchPositions(position, patch_grid(image_size, patch_size), width, width // heads)
        self.to_features = nn.Linear(width, out_dim)

    def forward(self, images: Tensor) -> Tensor:
        grid = patch_grid(tuple(images.shape[-2:]), self.patch_size)
        tokens = self.to_tokens(images).flatten(2).transpose(1, 2)
        tokens, rope = self.positions(tokens, grid)
        return self.to_features(self.transformer(tokens, rope)).unflatten(1, grid)

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an image of ``(H, W)`` pixels."""
        return patch_grid(image_size, self.patch_size)


class ViTDecoder(nn.Module):
    """Latents ``(B, h, w, in_dim)`` -> images ``(B, C, h*p, w*p)``; mirrors :class:`ViTEncoder`."""

    def __init__(self, out_channels: int = 3, patch_size: int = 16, width: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, in_dim: int = 256, position: str = "learned",
                 image_size: int = 256) -> None:
        super().__init__()
        self.patch_size, self.out_channels = patch_size, out_channels
        self.from_latents = nn.Linear(in_dim, width)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.positions = PatchPositions(position, patch_grid(image_size, patch_size), width, width // heads)
        self.to_pixels = nn.Linear(width, out_channels * patch_size**2)

    def forward(self, latents: Tensor) -> Tensor:
        grid = tuple(latents.shape[1:3])
        tokens = self.from_latents(latents.flatten(1, 2))
        tokens, rope = self.positions(tokens, grid)
        return unpatchify(self.to_pixels(self.transformer(tokens, rope)), grid, self.patch_size)

    @property
    def last_layer(self) -> Tensor:
        return self.to_pixels.weight


def unpatchify(patches: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """``(B, h*w, C*p*p)`` -> ``(B, C, h*p, w*p)`` (channel-major within a patch, as ``PixelShuffle`` orders it)."""
    batch = patches.shape[0]
    return nn.functional.pixel_shuffle(patches.transpose(1, 2).reshape(batch, -1, *grid), patch_size)
