"""The tokenizer objective: reconstruction + perceptual + bottleneck losses + a delayed, ramped GAN term."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from vtok.tokenizers import TokenizerOutput

from .discriminator import PatchDiscriminator
from .gan import adaptive_weight, discriminator_loss, generator_loss
from .perceptual import LPIPS


class TokenizerLoss(nn.Module):
    """Computes the generator and discriminator losses of one training step.

    Args:
        l1_weight, l2_weight: pixel reconstruction weights.
        perceptual_weight: LPIPS weight; 0 builds no LPIPS network (and needs no weights file).
        perceptual: keyword arguments of :class:`LPIPS` (``net``, ``backbone_path``, ``random_backbone``).
        quantizer_weight: multiplies the bottleneck's own (already weighted) losses.
        disc_weight: adversarial weight; 0 builds no discriminator.
        disc_start: step at which the discriminator starts learning and the generator starts seeing it.
        disc_ramp_steps: steps over which the generator's adversarial weight ramps from 0 to ``disc_weight``.
        gan_loss: ``"hinge"`` or ``"non_saturating"``.
        adaptive: scale the adversarial term by the gradient-norm ratio at the decoder's last layer.
        max_adaptive_weight: clamp of that ratio.
        discriminator: keyword arguments of :class:`PatchDiscriminator`.
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        perceptual_weight: float = 0.0,
        perceptual: dict[str, Any] | None = None,
        quantizer_weight: float = 1.0,
        disc_weight: float = 0.0,
        disc_start: int = 0,
        disc_ramp_steps: int = 0,
        gan_loss: str = "hinge",
        adaptive: bool = True,
        max_adaptive_weight: float = 1e4,
        discriminator: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.l1_weight, self.l2_weight = l1_weight, l2_weight
        self.perceptual_weight = perceptual_weight
        self.quantizer_weight = quantizer_weight
        self.disc_weight, self.disc_start, self.disc_ramp_steps = disc_weight, disc_start, disc_ramp_steps
        self.gan_loss, self.adaptive, self.max_adaptive_weight = gan_loss, adaptive, max_adaptive_weight
        self.perceptual = LPIPS(**(perceptual or {})) if perceptual_weight > 0 else None
        self.discriminator = PatchDiscriminator(**(discriminator or {})) if disc_weight > 0 else None

    def gan_factor(self, step: int) -> float:
        """Fraction of ``disc_weight`` in force at ``step``: 0 before ``disc_start``, then a linear ramp to 1."""
        if self.discriminator is None or step < self.disc_start:
            return 0.0
        if self.disc_ramp_steps <= 0:
            return 1.0
        return min(1.0, (step - self.disc_start + 1) / self.disc_ramp_steps)

    def generator_loss(
        self, images: Tensor, output: TokenizerOutput, step: int, last_layer: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for the tokenizer's parameters and a dict of detached terms for logging.

        Args:
            images: ``(B, C, H, W)`` targets in ``[-1, 1]``.
            output: the tokenizer's forward output for ``images``.
            step: global step (gates and ramps the GAN term).
            last_layer: decoder output weight, for the adaptive GAN weight.
        """
        recon = output.reconstruction.float()
        images = images.float()
        logs: dict[str, Tensor] = {}
        nll = recon.new_zeros(())
        if self.l1_weight:
            logs["l1"] = F.l1_loss(recon, images)
            nll = nll + self.l1_weight * logs["l1"]
        if self.l2_weight:
            logs["l2"] = F.mse_loss(recon, images)
            nll = nll + self.l2_weight * logs["l2"]
        if self.perceptual is not None:
            logs["perceptual"] = self.perceptual(recon, images).mean()
            nll = nll + self.perceptual_weight * logs["perceptual"]
        logs["reconstruction"] = nll
        total = nll
        for name, value in output.losses.items():
            logs[f"quantizer/{name}"] = value
            total = total + self.quantizer_weight * value

        factor = self.gan_factor(step)
        if factor > 0:
            assert self.discriminator is not None
            # The generator's view of the discriminator uses detached weights: one backward pass then gives the
            # tokenizer its adversarial gradient without pushing the discriminator the wrong way.
            frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            g_loss = generator_loss(functional_call(self.discriminator, frozen, (recon,)), self.gan_loss)
            weight = torch.ones((), device=recon.device)
            if self.adaptive and last_layer is not None and torch.is_grad_enabled():
                weight = adaptive_weight(nll, g_loss, last_layer, self.max_adaptive_weight)
            logs["gan/generator"], logs["gan/adaptive_weight"] = g_loss, weight
            total = total + self.disc_weight * factor * weight * g_loss
        logs["gan/factor"] = torch.tensor(factor)
        logs["total"] = total
        return total, {k: v.detach() for k, v in logs.items()}

    def discriminator_loss(self, images: Tensor, reconstruction: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for the discriminator's parameters (reconstruction is detached here).

        Before ``disc_start`` this is an exact zero that still touches every discriminator parameter, so DDP
        sees them all used and the discriminator does not change.
        """
        if self.discriminator is None:
            raise RuntimeError("no discriminator: set loss.disc_weight > 0")
        if step < self.disc_start:
            return sum(p.sum() for p in self.discriminator.parameters()) * 0.0, {}
        real = self.discriminator(images.float())
        fake = self.discriminator(reconstruction.detach().float())
        loss = discriminator_loss(real, fake, self.gan_loss)
        return loss, {"gan/discriminator": loss.detach(), "gan/real": real.mean().detach(),
                      "gan/fake": fake.mean().detach()}
