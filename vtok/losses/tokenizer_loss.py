"""The tokenizer objective: reconstruction + perceptual + bottleneck losses + a delayed, ramped GAN term, plus any
semantic terms (distillation to a teacher, image-text contrastive, Gram) on named tokenizer features."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from vtok.teachers import TextEncoder
from vtok.tokenizers import Tokenizer, TokenizerOutput

from .discriminator import PatchDiscriminator
from .gan import GAN_LOSSES, adaptive_weight, discriminator_loss, generator_loss
from .lecam import LeCam
from .perceptual import LPIPS
from .term import LossTerm, TermInputs


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
        lecam_weight: weight of the LeCam regulariser of the discriminator (0: off).
        lecam_decay: decay of LeCam's running logit means.
        terms: ``{name: LossTerm}``: semantic terms added to the generator loss (logged as ``NAME/...``).
        text_encoder: a :class:`~vtok.teachers.TextEncoder` (or its keyword arguments) that embeds the batch's
            captions, for terms that need text and for caption-conditioned tokenizers.
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
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.999,
        terms: dict[str, LossTerm] | None = None,
        text_encoder: TextEncoder | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if gan_loss not in GAN_LOSSES:  # checked now, not hours later when the discriminator starts
            raise ValueError(f"loss.gan_loss={gan_loss!r}: use one of {list(GAN_LOSSES)}")
        self.l1_weight, self.l2_weight = l1_weight, l2_weight
        self.perceptual_weight = perceptual_weight
        self.quantizer_weight = quantizer_weight
        self.disc_weight, self.disc_start, self.disc_ramp_steps = disc_weight, disc_start, disc_ramp_steps
        self.gan_loss, self.adaptive, self.max_adaptive_weight = gan_loss, adaptive, max_adaptive_weight
        self.perceptual = LPIPS(**(perceptual or {})) if perceptual_weight > 0 else None
        self.discriminator = PatchDiscriminator(**(discriminator or {})) if disc_weight > 0 else None
        self.lecam_weight = lecam_weight
        self.lecam = LeCam(lecam_decay) if lecam_weight > 0 and self.discriminator is not None else None
        self.terms = nn.ModuleDict({name: term for name, term in (terms or {}).items() if term is not None})
        if isinstance(text_encoder, dict):
            text_encoder = TextEncoder(**text_encoder)
        self.text_encoder = text_encoder
        missing = [name for name, term in self.terms.items() if term.needs_text and text_encoder is None]
        if missing:
            raise ValueError(f"loss terms {missing} read captions: set loss.text_encoder (source or config)")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Tokenizer features the terms read (ask the tokenizer's forward for these)."""
        return tuple(dict.fromkeys(name for term in self.terms.values() for name in term.features))

    @property
    def needs_text(self) -> bool:
        """Whether any term reads caption embeddings."""
        return any(term.needs_text for term in self.terms.values())

    def encode_text(self, captions: list[str] | None) -> Tensor | None:
        """``B`` captions -> ``(B, D)`` embeddings from the text encoder; ``None`` without one or captions."""
        if self.text_encoder is None or captions is None:
            return None
        return self.text_encoder(list(captions))

    def batch_text(self, batch: dict[str, Any], conditioned: bool, for_loss: bool = True) -> Tensor | None:
        """A batch's ``(B, D)`` caption embeddings when the terms (``for_loss``) or a caption-conditioned tokenizer
        (``conditioned``) read them, else ``None``.

        Raises:
            ValueError: they are needed and the batch has no ``caption``.
        """
        if not (conditioned or (for_loss and self.needs_text)):
            return None
        if "caption" not in batch:
            raise ValueError("this run reads captions (a text loss term or a caption-conditioned tokenizer), but "
                             "the batch has none: use captioned data (e.g. data.train.captions=true)")
        return self.encode_text(batch["caption"])

    @property
    def needs_captions(self) -> bool:
        """Whether any term reads the captions themselves."""
        return any(term.needs_captions for term in self.terms.values())

    def head_parameters(self) -> list[nn.Parameter]:
        """The terms' trainable parameters (projection heads, temperatures, an LLM's trained weights)."""
        return [p for p in self.terms.parameters() if p.requires_grad]

    def shardable_modules(self) -> list[nn.Module]:
        """The terms' large trainable blocks, sharded over ranks under ``trainer=fsdp``."""
        return [module for term in self.terms.values() for module in term.shardable_modules()]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups of the terms (each term says its own learning rates)."""
        return [group for term in self.terms.values() for group in term.param_groups(lr)]

    @torch.no_grad()
    def bind(self, tokenizer: Tokenizer) -> None:
        """Size the terms' heads from ``tokenizer``'s feature sizes (one forward pass of a small dummy batch)."""
        if not len(self.terms):
            return
        size = tokenizer.fixed_size or tokenizer.image_size
        images = torch.zeros(2, 3, size, size, device=next(tokenizer.parameters()).device)
        text_dim = self.text_encoder.dim if self.text_encoder is not None else None
        text = images.new_zeros(2, tokenizer.condition_dim) if tokenizer.condition_dim else None
        was_training = tokenizer.training
        tokenizer.eval()
        try:
            features = tokenizer(images, features=self.feature_names, text=text).features
        finally:
            tokenizer.train(was_training)
        dims = {name: value.shape[-1] for name, value in features.items()}
        for term in self.terms.values():
            term.bind(dims, text_dim)
            term.bind_tokenizer(tokenizer)
    def gan_factor(self, step: int) -> float:
        """Fraction of ``disc_weight`` in force at ``step``: 0 before ``disc_start``, then a linear ramp to 1."""
        if self.discriminator is None or step < self.disc_start:
            return 0.0
        if self.disc_ramp_steps <= 0:
            return 1.0
        return min(1.0, (step - self.disc_start + 1) / self.disc_ramp_steps)

    def generator_loss(
        self, images: Tensor, output: TokenizerOutput, step: int, last_layer: Tensor | None = None,
        text: Tensor | None = None,
        captions: list[str] | None = None,
        prompts: list[str] | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for the tokenizer's parameters and a dict of detached terms for logging.

        Args:
            images: ``(B, C, H, W)`` targets in ``[-1, 1]``.
            output: the tokenizer's forward output for ``images``.
            step: global step (gates and ramps the GAN term).
            last_layer: decoder output weight, for the adaptive GAN weight.
            text: ``(B, D)`` caption embeddings for the terms that read them.
            captions, prompts: the batch's captions and per-sample prompts, for terms that read text.
            tokenizer: the tokenizer being trained, for terms that look up its codebook.
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
        for name, value in output.decoder_losses.items():  # a generative decoder's own loss (the flow's)
            logs[f"decoder/{name}"] = value
            nll = nll + value
        logs["reconstruction"] = nll
        total = nll
        for name, value in output.losses.items():
            logs[f"quantizer/{name}"] = value
            total = total + self.quantizer_weight * value
        inputs = TermInputs(images, output, text, captions, prompts, tokenizer)
        for name, term in self.terms.items():
            value, term_logs = term(inputs)
            logs.update({f"{name}/{key}": v for key, v in term_logs.items()})
            total = total + value

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
        logs = {"gan/discriminator": loss.detach(), "gan/real": real.mean().detach(), "gan/fake": fake.mean().detach()}
        if self.lecam is not None:
            regulariser = self.lecam(real, fake)
            logs["gan/lecam"] = regulariser.detach()
            loss = loss + self.lecam_weight * regulariser
        return loss, logs
