"""Tokenizer families behind one API: ``encode`` -> :class:`Tokens`, ``decode``, ``embed``."""

from .tokenizer import DECODERS, ENCODERS, Tokenizer
from .tokens import TokenizerOutput, Tokens

__all__ = ["DECODERS", "ENCODERS", "Tokenizer", "TokenizerOutput", "Tokens"]
