"""The errors ``Tokenizer.from_pretrained`` (and reading a tokenizer from a training checkpoint) raise for bad files.

Every refusal of a mutated or hostile artifact is an :class:`InvalidPretrainedError` (or ``FileNotFoundError``
when a file is missing), never an unrelated exception from deep inside.
"""

from __future__ import annotations


class InvalidPretrainedError(ValueError):
    """A saved tokenizer is malformed, inconsistent, or asks for more than vtok will build."""


class UnsafeConfigError(InvalidPretrainedError):
    """A pretrained config asks for something outside vtok's allowlists (unknown kinds, import paths, keys)."""


class InvalidWeightsError(InvalidPretrainedError):
    """A weights file is malformed or does not fit the model its config describes."""
