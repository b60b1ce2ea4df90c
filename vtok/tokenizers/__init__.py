"""Tokenizer families behind one API: ``encode`` -> :class:`Tokens`, ``decode``, ``embed``.

Importing the package registers every family's encoder, decoder and expander kinds (``registry.py``).
"""

from . import (  # noqa: F401  (each registers its kinds)
    conv,
    dual,
    dynamic_tokens,
    expander,
    flow_decoder,
    latent_tokens,
    magvit2,
    slots,
    titok,
    vit,
)
from .registry import DECODERS, ENCODERS, EXPANDERS
from .tokenizer import Tokenizer
from .tokens import TokenizerOutput, Tokens

__all__ = ["DECODERS", "ENCODERS", "EXPANDERS", "Tokenizer", "TokenizerOutput", "Tokens"]
