"""vtok: one framework for training image tokenizers."""

from vtok.tokenizers import Tokenizer, Tokens

__version__ = "0.1.0"
__all__ = ["Tokenizer", "Tokens", "__version__"]
