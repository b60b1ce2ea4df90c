"""Training losses: reconstruction, perceptual, adversarial, semantic terms, and their combination."""

from .contrastive import ImageTextContrastive
from .discriminator import PatchDiscriminator
from .distillation import SemanticDistillation
from .gan import adaptive_weight, discriminator_loss, generator_loss
from .gram import GramLoss
from .lecam import LeCam
from .perceptual import LPIPS, MissingWeightsError
from .term import LossTerm, TermEvaluation, TermInputs
from .tokenizer_loss import TokenizerLoss

__all__ = [
    "LPIPS", "GramLoss", "ImageTextContrastive", "LeCam", "LossTerm", "MissingWeightsError", "PatchDiscriminator",
    "SemanticDistillation", "TermEvaluation", "TermInputs", "TokenizerLoss", "adaptive_weight", "discriminator_loss",
    "generator_loss",
]
