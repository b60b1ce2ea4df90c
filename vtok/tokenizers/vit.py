"""ViT encoder and decoder on a 2D grid of patches (ViTok / MaskGIT-ViT style).

The encoder turns ``(B, C, H, W)`` images into ``(B, H/p, W/p, out_dim)`` features, one per ``p x p`` patch;
the decoder turns ``(B, h, w, in_dim)`` latents back into ``(B, C, h*p, w*p)`` images. Positions are learned
(a table resized for other grids) or 2D rotary (any grid as is).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn

from vtok.modules.patches import PatchPositions, unpatchify
from vtok.modules.transformer import Transformer, block_indices, patch_grid

from .parts import Decoder, Encoder
from .registry import DECODERS, ENCODERS


@ENCODERS.register("vit")
class ViTEncoder(Encoder):
    """Images ``(B, C, H, W)`` -> features ``(B, H/p, W/p, out_dim)``.

    Intermediate features: ``block{i}``, the patch tokens ``(B, H/p, W/p, width)`` after transformer block ``i``.

    Args:
        in_channels: image channels.
        patch_size: side ``p`` of a patch (one token per patch).
        width, depth, heads, mlp_ratio: transformer size.
        out_dim: feature size handed to the bottleneck.
        position: ``learned`` or ``rope``.
        image_size: training resolution (size of the learned position table).
        shallow_block, shallow_dim: also hand the bottleneck ``shallow_dim`` channels read from the tokens after
            block ``shallow_block`` (DualToken: deep features for a semantic codebook, shallow ones for a
            perceptual codebook). The bottleneck then receives ``out_dim + shallow_dim`` channels, deep first,
            and ``self.out_dim`` is that sum.
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, width: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, out_dim: int = 256, position: str = "learned",
                 image_size: int = 256, shallow_block: int | None = None, shallow_dim: int | None = None) -> None:
        super().__init__()
        if (shallow_block is None) != (shallow_dim is None):
            raise ValueError("shallow_block and shallow_dim go together (DualToken's shallow features)")
        if shallow_block is not None and not 0 <= shallow_block < depth:
            raise ValueError(f"shallow_block={shallow_block} must lie in 0..{depth - 1}")
        self.patch_size, self.out_dim = patch_size, out_dim + (shallow_dim or 0)
        self.shallow_block = shallow_block
        self.to_tokens = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.positions = PatchPositions(position, patch_grid(image_size, patch_size), width, width // heads)
        self.to_features = nn.Linear(width, out_dim)
        self.to_shallow = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, shallow_dim)) if shallow_dim else None
        self.feature_names = tuple(f"block{i}" for i in range(depth))

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, C, H, W)`` -> ``(B, H/p, W/p, out_dim)`` and the named blocks' tokens."""
        self._check_names(names, condition)
        grid = patch_grid(tuple(images.shape[-2:]), self.patch_size)
        tokens = self.to_tokens(images).flatten(2).transpose(1, 2)
        tokens, rope = self.positions(tokens, grid)
        keep = block_indices(names) | ({self.shallow_block} if self.shallow_block is not None else set())
        tokens, kept = self.transformer.forward_blocks(tokens, rope, keep=keep)
        features = {f"block{i}": hidden.unflatten(1, grid) for i, hidden in kept.items() if f"block{i}" in names}
        out = self.to_features(tokens)
        if self.to_shallow is not None:
            out = torch.cat([out, self.to_shallow(kept[self.shallow_block])], -1)
        return out.unflatten(1, grid), features

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an image of ``(H, W)`` pixels."""
        return patch_grid(image_size, self.patch_size)


@DECODERS.register("vit")
class ViTDecoder(Decoder):
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

    def forward(self, latents: Tensor, lengths: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """``(B, h, w, in_dim)`` -> ``(B, C, h*p, w*p)`` (a grid has no lengths)."""
        grid = tuple(latents.shape[1:3])
        tokens = self.from_latents(latents.flatten(1, 2))
        tokens, rope = self.positions(tokens, grid)
        return unpatchify(self.to_pixels(self.transformer(tokens, rope)), grid, self.patch_size)

    @property
    def last_layer(self) -> Tensor:
        return self.to_pixels.weight

