"""End-to-end tuning of a tokenizer against a causal LLM (ETT): the LLM reads the tokenizer's code *embeddings*
through a projector, so its caption loss reaches the codebook and the encoder.

Training-time parts: an exported tokenizer loads without any of this; the projector (and LoRA or LLM weights)
export beside it (:mod:`vtok.llm.export`).
"""

from .bridge import ImageToText
from .caption_loss import CaptionLoss
from .projector import Projector

__all__ = ["CaptionLoss", "ImageToText", "Projector"]
