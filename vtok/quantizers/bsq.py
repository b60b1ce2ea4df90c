"""Binary spherical quantization (BSQ): LFQ on the unit sphere, codes ``+-1/sqrt(bits)``."""

from __future__ import annotations

from .lfq import LFQ
from .registry import QUANTIZERS


@QUANTIZERS.register("bsq")
class BSQ(LFQ):
    """LFQ with the input projected onto the unit sphere.

    Defaults follow the BSQ paper: the codebook entropy uses the factorised approximation (an upper bound),
    which makes any number of bits cheap. Arguments as :class:`~vtok.quantizers.lfq.LFQ`.
    """

    def __init__(self, bits: int, dim: int | None = None, codebook_entropy: str = "factorized",
                 temperature: float = 0.1, **kwargs) -> None:
        super().__init__(bits, dim, codebook_entropy=codebook_entropy, temperature=temperature, spherical=True,
                         **kwargs)
