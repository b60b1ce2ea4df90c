"""LeCam regularisation of the discriminator: its logits stay near the running mean of the other side's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.distributed import all_reduce_sum, world_size


class LeCam(nn.Module):
    """``mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2)`` with EMAs of the mean logits.

    Keeps a discriminator trained on few images from separating real and fake by ever larger margins (the
    regulariser of "Regularizing GANs under limited data", as MAGVIT-v2 and Open-MAGVIT2 use it).

    Args:
        decay: decay of the running means of the real and fake logits.
    """

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("started", torch.tensor(False))

    def forward(self, real: Tensor, fake: Tensor) -> Tensor:
        """``real`` and ``fake`` logits (any shape) -> the scalar regulariser; updates the running means."""
        means = all_reduce_sum(torch.stack([real.detach().float().mean(), fake.detach().float().mean()]))
        means = means / world_size()
        if bool(self.started):
            self.ema_real.mul_(self.decay).add_((1 - self.decay) * means[0])
            self.ema_fake.mul_(self.decay).add_((1 - self.decay) * means[1])
        else:
            self.ema_real.copy_(means[0])
            self.ema_fake.copy_(means[1])
            self.started.fill_(True)
        return F.relu(real.float() - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake.float()).pow(2).mean()
