"""Exponential moving average of a module's weights, kept outside the module so DDP and optimisers ignore it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from vtok.distributed import is_sharded, shard_like, whole


class EMA:
    """A frozen copy of ``model`` whose weights follow ``decay * ema + (1 - decay) * weights``.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so early weights do not
    linger. Buffers (e.g. codebook usage counters) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        # the average is a deep copy of the model: its parameters come in the same order
        averages = list(self.model.parameters())
        live = [p if p.dtype == a.dtype else p.to(a.dtype) for a, p in zip(averages, model.parameters())]
        if any(is_sharded(a) for a in averages):
            for average, param in zip(averages, live):
                average.lerp_(param, 1.0 - decay)
        else:  # one multi-tensor kernel: the same arithmetic as the loop, bit for bit, without its per-tensor cost
            torch._foreach_lerp_(averages, live, 1.0 - decay)
        ema_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            ema_buffers[name].copy_(buffer)

    def to(self, device: torch.device | str) -> EMA:
        self.model.to(device)
        return self

    @torch.no_grad()
    def shard_like(self, model: nn.Module) -> None:
        """Shard the average as ``model`` is sharded (``trainer=fsdp``): each rank keeps and updates its slice of
        every sharded weight (``DTensor``), so the EMA costs ``1 / world`` of a copy per rank."""
        for name, param in model.named_parameters():
            if is_sharded(param):
                owner, leaf = _owner(self.model, name)
                setattr(owner, leaf, nn.Parameter(shard_like(getattr(owner, leaf), param), requires_grad=False))

    def state_dict(self) -> dict:
        """Decay, update count and the averaged weights, whole (sharded ones gathered: every rank calls this)."""
        weights = {k: whole(v) for k, v in self.model.state_dict().items()}
        return {"decay": self.decay, "updates": self.updates, "weights": weights}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        current = self.model.state_dict()
        weights = {k: shard_like(v, current[k]) if k in current else v for k, v in state["weights"].items()}
        self.model.load_state_dict(weights)


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf
