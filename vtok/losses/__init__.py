"""Training losses: reconstruction, perceptual, adversarial, and their combination."""

from .discriminator import PatchDiscriminator
from .gan import adaptive_weight, discriminator_loss, generator_loss
from .perceptual import LPIPS, MissingWeightsError
from .tokenizer_loss import TokenizerLoss

__all__ = [
    "LPIPS", "MissingWeightsError", "PatchDiscriminator", "TokenizerLoss", "adaptive_weight",
    "discriminator_loss", "generator_loss",
]
