"""Random token budgets for training flexible-length 1D tokenizers.

Dropping the tail of the token sequence during training (every position after a random ``k`` is replaced by a
mask token in the decoder) forces the first tokens to carry the coarse content and later ones the detail, so
that one model decodes from any prefix. This is nested dropout as in FlexTok (``k`` drawn from powers of two)
and tail-token drop as in One-D-Piece (``k`` uniform, and only for a fraction of the samples).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODES = ("uniform", "pow2")


class NestedDropout(nn.Module):
    """Draws how many leading tokens each sample keeps.

    Args:
        max_tokens: ``K``, the full sequence length.
        mode: ``uniform`` (``k`` uniform in ``1..K``) or ``pow2`` (``k`` uniform in ``{1, 2, 4, ..., K}``).
        p: fraction of samples that are truncated; the others keep all ``K`` tokens.
        min_tokens: smallest ``k`` drawn.
    """

    def __init__(self, max_tokens: int, mode: str = "uniform", p: float = 1.0, min_tokens: int = 1) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown nested dropout mode {mode!r}; choose one of {list(MODES)}")
        if not 1 <= min_tokens <= max_tokens:
            raise ValueError(f"min_tokens={min_tokens} must lie in 1..{max_tokens}")
        self.max_tokens, self.mode, self.p, self.min_tokens = max_tokens, mode, p, min_tokens
        if mode == "pow2":
            ladder = [k for k in budget_ladder(max_tokens) if k >= min_tokens]
        else:
            ladder = list(range(min_tokens, max_tokens + 1))
        self.register_buffer("ladder", torch.tensor(ladder), persistent=False)

    def forward(self, batch_size: int, device: torch.device | None = None) -> Tensor:
        """``(B,)`` long token counts: drawn for a fraction ``p`` of samples, ``K`` for the rest."""
        device = device or self.ladder.device
        ladder = self.ladder.to(device)
        drawn = ladder[torch.randint(len(ladder), (batch_size,), device=device)]
        keep_all = torch.rand(batch_size, device=device) >= self.p
        return torch.where(keep_all, torch.full_like(drawn, self.max_tokens), drawn)


def budget_ladder(max_tokens: int) -> list[int]:
    """``[1, 2, 4, ..., max_tokens]`` (``max_tokens`` included even when it is not a power of two)."""
    ladder, k = [], 1
    while k < max_tokens:
        ladder.append(k)
        k *= 2
    return [*ladder, max_tokens]


def keep_prefixes(tokens: Tensor, mask: Tensor, total: int, lengths: Tensor | None = None) -> Tensor:
    """``(B, k, D)`` tokens -> ``(B, total, D)``: positions from ``k`` on, and from ``lengths[b]`` on for image ``b``,
    hold the ``(D,)`` mask token, which is what a decoder reads for "not sent"."""
    batch, k, _ = tokens.shape
    mask = mask.to(tokens.dtype)
    x = torch.cat([tokens, mask.expand(batch, total - k, -1)], dim=1)
    if lengths is not None:
        kept = torch.arange(total, device=x.device)[None] < lengths.to(x.device)[:, None]
        x = torch.where(kept[..., None], x, mask)
    return x
