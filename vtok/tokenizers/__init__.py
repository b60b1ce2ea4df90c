"""Tokenizer families behind one API: ``encode`` -> :class:`Tokens`, ``decode``, ``embed``.

Importing the package registers every family's encoder, decoder and expander kinds (``registry.py``).
"""

from . import conv, dual, expander, flow_decoder, latent_tokens, magvit2, titok, vit  # noqa: F401  (each registers its kinds)
from .registry import DECODERS, ENCODERS, EXPANDERS
from .tokenizer import Tokenizer
from .tokens import TokenizerOutput, Tokens

__all__ = ["DECODERS", "ENCODERS", "EXPANDERS", "Tokenizer", "TokenizerOutput", "Tokens"]
