"""The projector: tokenizer code embeddings -> the LLM's input embedding space."""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn


class Projector(nn.Module):
    """``(B, N, in_dim)`` -> ``(B, N, out_dim)``: an MLP with GELU (``depth`` linear layers; 1 is linear).

    Args:
        in_dim: size of a token's code vector (or continuous latent).
        out_dim: the LLM's hidden size.
        hidden_dim: width of the hidden layers (default ``out_dim``).
        depth: linear layers.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth}: a projector has at least one layer")
        hidden_dim = hidden_dim or out_dim
        widths = [in_dim, *[hidden_dim] * (depth - 1), out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < depth - 1:
                layers.append(nn.GELU())
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim, self.hidden_dim, self.depth = in_dim, out_dim, hidden_dim, depth

    def forward(self, codes: Tensor) -> Tensor:
        return self.layers(codes)
