"""``TokenPrior``: a small causal transformer that predicts each token id from the ones before it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalBlock(nn.Module):
    """Pre-norm transformer block whose attention sees only earlier positions."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, width)`` -> ``(B, N, width)``."""
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class TokenPrior(nn.Module):
    """``p(id_i | id_<i)`` over sequences of ``vocab_size`` ids, up to ``max_length`` long.

    A start token (id ``vocab_size``) precedes every sequence, so the first id has a prediction too.

    Args:
        vocab_size: distinct token ids.
        max_length: longest sequence.
        width, depth, heads: the transformer.
    """

    def __init__(self, vocab_size: int, max_length: int, width: int = 256, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.vocab_size, self.max_length = vocab_size, max_length
        self.embed = nn.Embedding(vocab_size + 1, width)
        self.positions = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.blocks = nn.ModuleList(CausalBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        """``(B, N)`` ids -> ``(B, N, vocab_size)`` logits: position ``i`` predicts ``ids[:, i]`` from
        ``ids[:, :i]``."""
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequences of {ids.shape[1]} ids; this prior reads at most {self.max_length}")
        start = ids.new_full((ids.shape[0], 1), self.vocab_size)
        x = self.embed(torch.cat([start, ids[:, :-1]], dim=1)) + self.positions[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def bits(self, ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, N)`` ids (each sequence's first ``lengths[b]`` counted) -> ``(B,)`` total ``-log2 p`` in bits."""
        nats = F.cross_entropy(self(ids).transpose(1, 2).float(), ids, reduction="none")
        if lengths is not None:
            nats = nats * (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None])
        return nats.sum(dim=1) / math.log(2)

    @torch.no_grad()
    def probabilities(self, ids: Tensor) -> Tensor:
        """``(B, N)`` ids -> ``(B, N, vocab_size)`` fp64 probabilities of each position given the ones before (what
        entropy coding reads; decoding recomputes them from the decoded prefix)."""
        return self(ids).double().softmax(dim=-1)

    @torch.no_grad()
    def next_probabilities(self, prefix: Tensor, length: int) -> Tensor:
        """``(i,)`` decoded ids -> ``(vocab_size,)`` fp64 probabilities of id ``i``, computed on a sequence of the
        full ``length`` (the prefix padded) so that they are bit for bit what :meth:`probabilities` gave the encoder:
        with causal attention, later ids cannot change position ``i``'s value, and the same shapes take the same
        kernels (a shorter input may round differently, and one flipped probability derails the decoder)."""
        padded = torch.cat([prefix, prefix.new_zeros(length - len(prefix))])[None].to(self.head.weight.device)
        return self.probabilities(padded)[0, len(prefix)]
