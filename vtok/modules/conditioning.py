"""Conditioning tokens: one vector per image (a caption's embedding) as a few extra transformer tokens."""

from __future__ import annotations

from torch import Tensor, nn

from .transformer import init_token


class ConditionTokens(nn.Module):
    """``(B, condition_dim)`` -> ``(B, count, width)`` tokens that a transformer reads beside its own (TexTok).

    Args:
        condition_dim: size of the conditioning vector.
        count: tokens it becomes.
        width: the transformer's width.
    """

    def __init__(self, condition_dim: int, count: int, width: int) -> None:
        super().__init__()
        self.count, self.width = count, width
        self.project = nn.Linear(condition_dim, count * width)
        self.positions = init_token((count, width))

    def forward(self, condition: Tensor) -> Tensor:
        return self.project(condition).unflatten(-1, (self.count, self.width)) + self.positions.to(condition.dtype)
