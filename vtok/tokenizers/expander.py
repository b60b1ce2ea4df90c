"""A transformer stage between the bottleneck and the decoder (MingTok-style semantic expansion).

MingTok keeps a compact continuous latent for generation and expands it with a transformer into features that
are trained to match a semantic teacher; the pixel decoder then reads the expanded features. This module is
that stage. It returns the expanded features, which the tokenizer also exposes as
``TokenizerOutput.features["expanded"]`` for losses that supervise them.
"""

from __future__ import annotations

from torch import Tensor, nn

from vtok.modules.transformer import Transformer, grid_positions, rope_2d

from .registry import EXPANDERS


@EXPANDERS.register("transformer")
class TokenExpander(nn.Module):
    """``(B, *layout, in_dim)`` -> ``(B, *layout, out_dim)`` through a transformer with rotary positions.

    Args:
        in_dim: size of the bottleneck's latents.
        width, depth, heads, mlp_ratio: transformer size.
        out_dim: size of the expanded features the decoder reads.
    """

    def __init__(self, in_dim: int, width: int = 512, depth: int = 4, heads: int = 8, mlp_ratio: float = 4.0,
                 out_dim: int = 512) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.project_in = nn.Linear(in_dim, width)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.project_out = nn.Linear(width, out_dim)
        self.head_dim = width // heads

    def forward(self, latents: Tensor) -> Tensor:
        layout = tuple(latents.shape[1:-1])
        grid = layout if len(layout) == 2 else (1, layout[0])
        tokens = self.project_in(latents.flatten(1, -2))
        rope = rope_2d(grid_positions(*grid, device=latents.device), self.head_dim)
        return self.project_out(self.transformer(tokens, rope)).unflatten(1, layout)


