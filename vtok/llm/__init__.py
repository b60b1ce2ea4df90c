"""Tokenizers and causal LLMs together.

ETT: the LLM reads the tokenizer's code *embeddings* through a projector, so its caption loss reaches the codebook
and the encoder (:class:`CaptionLoss`, :class:`ImageToText`). "See and draw": the codebook joins the LLM's
vocabulary, which then reads and writes image ids (:class:`VocabularyLoss`, :class:`ImageVocabulary`).

Training-time parts: an exported tokenizer loads without any of this; the bridges (and LoRA or LLM weights)
export beside it (:mod:`vtok.llm.export`).
"""

from .bridge import ImageToText
from .caption_loss import CaptionLoss
from .projector import Projector
from .vocabulary import ImageVocabulary
from .vocabulary_loss import VocabularyLoss

__all__ = ["CaptionLoss", "ImageToText", "ImageVocabulary", "Projector", "VocabularyLoss"]
