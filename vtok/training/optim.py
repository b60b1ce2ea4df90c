"""The optimiser and its schedule: AdamW over the tokenizer, the loss terms' heads and the discriminator.

No weight decay on biases, norms and codebooks. The tokenizer and the terms follow warm-up + cosine (by steps, or
by the share of a time budget when that is further along); the discriminator its delayed start.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from vtok.losses import TokenizerLoss
from vtok.tokenizers import Tokenizer

from .schedule import delayed_constant


def build_optimizer(tokenizer: Tokenizer, loss: TokenizerLoss, lr: float, disc_lr: float | None,
                    betas: tuple[float, float], weight_decay: float, lr_factor: Callable[[int], float],
                    fused: bool = True) -> dict[str, Any]:
    """Lightning's ``{"optimizer", "lr_scheduler"}`` for a tokenizer run.

    Args:
        lr_factor: the tokenizer's schedule, step -> multiple of ``lr``.
        fused: one fused AdamW kernel for every tensor (CPU and CUDA); FSDP's sharded tensors need ``False``.
    """
    decay, no_decay = [], []
    for name, p in tokenizer.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "codebook" not in name else no_decay).append(p)
    groups = [group for group in ({"params": decay, "weight_decay": weight_decay, "lr": lr},
                                  {"params": no_decay, "weight_decay": 0.0, "lr": lr}) if group["params"]]
    # the loss terms' heads (and an LLM's weights) learn on the tokenizer's schedule, at their own rates
    groups += loss.param_groups(lr)
    lambdas = [lr_factor] * len(groups)
    if loss.discriminator is not None:
        groups.append({"params": list(loss.discriminator.parameters()), "weight_decay": 0.0, "lr": disc_lr or lr})
        lambdas.append(partial(delayed_constant, start=loss.disc_start))
    # The fused kernel: the per-tensor loop cost ~9 ms a step for the quick start's 124 small tensors, fused 2.5 ms.
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
