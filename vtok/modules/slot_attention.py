"""Slot attention (Locatello et al. 2020): ``K`` slots compete for the inputs over a few rounds.

The softmax runs over the slots (each input is shared out among them), then each slot takes the weighted mean of
the values it won and updates through a GRU and an MLP, all shared across slots. Nothing depends on a slot's index,
so permuting the initial slots permutes the result: slots are a set.
"""

from __future__ import annotations

from torch import Tensor, nn


class SlotAttention(nn.Module):
    """``(B, N, input_dim)`` inputs and ``(B, K, dim)`` initial slots -> ``(B, K, dim)`` slots.

    Args:
        dim: slot size.
        input_dim: size of the inputs the slots read.
        iterations: rounds of competition.
        hidden_dim: the MLP's hidden size (default ``2 * dim``).
        eps: added to the attention before each slot's weighted mean (a slot that wins nothing stays finite).
    """

    def __init__(self, dim: int, input_dim: int, iterations: int = 3, hidden_dim: int | None = None,
                 eps: float = 1e-8) -> None:
        super().__init__()
        self.iterations, self.eps, self.scale = iterations, eps, dim ** -0.5
        self.norm_inputs, self.norm_slots, self.norm_mlp = nn.LayerNorm(input_dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(input_dim, dim, bias=False)
        self.to_v = nn.Linear(input_dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        hidden = hidden_dim or 2 * dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, inputs: Tensor, slots: Tensor) -> Tensor:
        inputs = self.norm_inputs(inputs)
        keys, values = self.to_k(inputs), self.to_v(inputs)  # B, N, D
        batch, count, dim = slots.shape
        for _ in range(self.iterations):
            previous = slots
            queries = self.to_q(self.norm_slots(slots))  # B, K, D
            attention = (queries @ keys.transpose(1, 2) * self.scale).softmax(dim=1) + self.eps  # over slots
            attention = attention / attention.sum(dim=-1, keepdim=True)  # each slot's weighted mean of inputs
            updates = attention @ values  # B, K, D
            slots = self.gru(updates.reshape(-1, dim), previous.reshape(-1, dim)).view(batch, count, dim)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots
