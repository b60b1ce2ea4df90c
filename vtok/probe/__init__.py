"""The autoregressive probe: how well a learned prior models a tokenizer's tokens, and the rate of real bitstreams
coded with it (GigaTok-style "AR probing").

- :mod:`~vtok.probe.sequences`: a tokenizer's tokens as one id sequence per image (the order the prior reads);
- :mod:`~vtok.probe.prior`: :class:`TokenPrior`, a small causal transformer over those ids;
- :mod:`~vtok.probe.coding`: range coding of a sequence with the prior's probabilities (``constriction``).
"""

from .coding import decode_sequence, encode_sequence, ideal_bits
from .prior import TokenPrior
from .sequences import token_sequences

__all__ = ["TokenPrior", "decode_sequence", "encode_sequence", "ideal_bits", "token_sequences"]
