"""Adversarial loss functions and the adaptive generator weight of VQGAN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_LOSSES = ("hinge", "non_saturating")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "hinge") -> Tensor:
    """Scalar loss that trains the discriminator to score real above fake (``hinge`` or ``non_saturating``)."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    raise ValueError(f"unknown GAN loss {kind!r}; use hinge or non_saturating")


def generator_loss(fake_logits: Tensor, kind: str = "hinge") -> Tensor:
    """Scalar loss that trains the generator to raise the discriminator's score of its output."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; use hinge or non_saturating")


def adaptive_weight(nll_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """``|grad nll| / |grad gan|`` at the decoder's last layer, clamped to ``[0, max_weight]`` and detached.

    Balances the adversarial gradient against the reconstruction gradient where both enter the image.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
