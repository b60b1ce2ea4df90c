"""A tokenizer's tokens as one id sequence per image: the order the autoregressive prior reads them
(:func:`vtok.tokenizers.tokens.token_sequences`, shared with the LLM vocabulary bridge)."""

from __future__ import annotations

from vtok.tokenizers.tokens import token_sequences

__all__ = ["token_sequences"]
