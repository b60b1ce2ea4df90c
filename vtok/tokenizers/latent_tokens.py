"""1D latent-token encoder and decoder (TiTok style), with flexible length.

The encoder appends ``K`` learned latent tokens to the image's patch tokens; after the transformer only the
latent tokens are kept, so an image becomes ``(B, K, out_dim)`` whatever its patch count. The decoder reads
``(B, k, in_dim)`` tokens, ``k <= K``: missing or dropped positions are a learned mask token, and learned
patch queries attend to them to rebuild the image. With ``nested_dropout`` the decoder trains on random
prefixes, so one model decodes any ``k``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor, nn

from vtok.modules.conditioning import ConditionTokens
from vtok.modules.patches import PatchPositions, unpatchify
from vtok.modules.transformer import Transformer, block_indices, causal_query_mask, init_token, patch_grid

from .nested_dropout import NestedDropout, keep_prefixes
from .parts import Decoder, Encoder, check_condition
from .registry import DECODERS, ENCODERS


@ENCODERS.register("latent_tokens")
class LatentTokenEncoder(Encoder):
    """Images ``(B, C, H, W)`` -> latent tokens ``(B, num_tokens, out_dim)``.

    Intermediate features: ``block{i}``, the patch tokens ``(B, H/p, W/p, width)`` after transformer block ``i``
    (the latent tokens read the image through them).

    Args:
        num_tokens: ``K``, latent tokens per image.
        in_channels, patch_size, width, depth, heads, mlp_ratio: the ViT reading the image.
        out_dim: feature size handed to the bottleneck.
        position: positions of the patches, ``learned`` or ``rope`` (latent tokens always have learned ones).
        image_size: training resolution.
        condition_dim: read a ``(B, condition_dim)`` caption embedding as ``condition_tokens`` extra tokens
            (TexTok: tokenization conditioned on the caption); ``None`` reads images alone.
        condition_tokens: how many tokens the caption embedding becomes.
        causal: the latent tokens are causal queries (SEED's causal Q-Former, in one transformer): token ``i``
            reads the patches and tokens ``0..i``, and the patches do not read the tokens, so token ``i`` depends on
            the image and on earlier tokens only, the order an LLM reads and writes them in.
    """

    def __init__(self, num_tokens: int = 128, in_channels: int = 3, patch_size: int = 16, width: int = 512,
                 depth: int = 8, heads: int = 8, mlp_ratio: float = 4.0, out_dim: int = 12,
                 position: str = "learned", image_size: int = 256, condition_dim: int | None = None,
                 condition_tokens: int = 4, causal: bool = False) -> None:
        super().__init__()
        if causal and condition_dim:
            raise ValueError("causal latent tokens read the image alone: drop condition_dim (caption conditioning)")
        self.causal = causal
        self.num_tokens, self.patch_size, self.out_dim = num_tokens, patch_size, out_dim
        self.condition_dim = condition_dim
        self.condition = ConditionTokens(condition_dim, condition_tokens, width) if condition_dim else None
        self.to_tokens = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.latents = init_token((num_tokens, width))
        self.positions = PatchPositions(position, patch_grid(image_size, patch_size), width, width // heads)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.to_features = nn.Linear(width, out_dim)
        self.feature_names = tuple(f"block{i}" for i in range(depth))

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, C, H, W)`` (and ``(B, condition_dim)``) -> ``(B, K, out_dim)`` and the named blocks' patches."""
        self._check_names(names, condition)
        grid = patch_grid(tuple(images.shape[-2:]), self.patch_size)
        patches = self.to_tokens(images).flatten(2).transpose(1, 2)
        extra = [self.condition(condition.to(patches.dtype))] if self.condition is not None else []
        count = sum(e.shape[1] for e in extra)
        patches, rope = self.positions(patches, grid, extra_after=self.num_tokens + count)
        latents = self.latents.to(patches.dtype).expand(len(images), -1, -1)
        mask = causal_query_mask(patches.shape[1], self.num_tokens, patches.device) if self.causal else None
        tokens, kept = self.transformer.forward_blocks(torch.cat([patches, latents, *extra], dim=1), rope,
                                                       keep=block_indices(names), mask=mask)
        patch_count = grid[0] * grid[1]
        features = {f"block{i}": hidden[:, :patch_count].unflatten(1, grid) for i, hidden in kept.items()}
        return self.to_features(tokens[:, patch_count: patch_count + self.num_tokens]), features

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int]:
        """Token layout ``(K,)``: the same for every image size."""
        return (self.num_tokens,)


@DECODERS.register("latent_tokens")
class LatentTokenDecoder(Decoder):
    """Tokens ``(B, k, in_dim)`` (``k <= K``) -> images ``(B, C, image_size, image_size)``.

    Args:
        num_tokens: ``K``, the longest sequence.
        out_channels, patch_size, width, depth, heads, mlp_ratio: the ViT writing the image.
        in_dim: size of the (quantized) tokens.
        position: positions of the patch queries, ``learned`` or ``rope``.
        image_size: output resolution (fixed: 1D tokens carry no grid).
        nested_dropout: ``{"mode": "uniform" | "pow2", "p": ..., "min_tokens": ...}`` trains on random
            prefixes so every ``k`` decodes; ``None`` trains at ``K`` only.
        condition_dim, condition_tokens: read a caption embedding as extra tokens, as the encoder does (TexTok).
    """

    takes_lengths = True

    def __init__(self, num_tokens: int = 128, out_channels: int = 3, patch_size: int = 16, width: int = 512,
                 depth: int = 8, heads: int = 8, mlp_ratio: float = 4.0, in_dim: int = 12,
                 position: str = "learned", image_size: int = 256,
                 nested_dropout: dict[str, Any] | None = None, condition_dim: int | None = None,
                 condition_tokens: int = 4) -> None:
        super().__init__()
        self.condition_dim = condition_dim
        self.condition = ConditionTokens(condition_dim, condition_tokens, width) if condition_dim else None
        self.num_tokens, self.patch_size = num_tokens, patch_size
        self.grid = patch_grid(image_size, patch_size)
        self.from_tokens = nn.Linear(in_dim, width)
        self.mask_token = init_token((width,))
        self.token_positions = init_token((num_tokens, width))
        self.queries = init_token((width,))
        self.positions = PatchPositions(position, self.grid, width, width // heads)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.to_pixels = nn.Linear(width, out_channels * patch_size**2)
        self.nested_dropout = NestedDropout(num_tokens, **nested_dropout) if nested_dropout else None
        self.fixed_size = image_size

    @property
    def flexible(self) -> bool:
        """Whether training made every prefix length decodable."""
        return self.nested_dropout is not None

    def forward(self, tokens: Tensor, lengths: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """Decode ``(B, k, in_dim)`` tokens; ``lengths`` ``(B,)`` keeps only each sample's first ``lengths[b]``;
        ``condition`` ``(B, condition_dim)`` is the caption embedding of a conditioned decoder."""
        check_condition(self, condition)
        batch, k, _ = tokens.shape
        if k > self.num_tokens:
            raise ValueError(f"got {k} tokens, the decoder reads at most {self.num_tokens}")
        if self.training and self.nested_dropout is not None:
            drawn = self.nested_dropout(batch, tokens.device)
            lengths = drawn if lengths is None else torch.minimum(lengths, drawn)
        x = keep_prefixes(self.from_tokens(tokens), self.mask_token, self.num_tokens, lengths)
        x = x + self.token_positions.to(x.dtype)
        extra = [self.condition(condition.to(x.dtype))] if self.condition is not None else []
        before = self.num_tokens + sum(e.shape[1] for e in extra)
        queries = self.queries.to(x.dtype).expand(batch, self.grid[0] * self.grid[1], -1)
        queries, rope = self.positions(queries, self.grid, extra_before=before)
        out = self.transformer(torch.cat([x, *extra, queries], dim=1), rope)
        return unpatchify(self.to_pixels(out[:, before:]), self.grid, self.patch_size)

    @property
    def last_layer(self) -> Tensor:
        return self.to_pixels.weight
