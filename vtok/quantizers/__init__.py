"""Bottlenecks behind one interface: ``forward(z) -> QuantizerOutput``.

``QUANTIZERS`` is the allowlist that configs and exported checkpoints name by ``kind``.
"""

from __future__ import annotations

from typing import Any

from .base import Quantizer, QuantizerOutput
from .bernoulli import BernoulliQuantizer
from .bsq import BSQ
from .continuous import ContinuousBottleneck, GaussianBottleneck
from .dual_codebook import DualCodebookQuantizer
from .fsq import FSQ
from .lfq import LFQ
from .multi_codebook import MultiCodebookQuantizer
from .registry import QUANTIZERS
from .residual import ResidualQuantizer
from .vq import VectorQuantizer


def build_quantizer(config: dict[str, Any]) -> Quantizer:
    """Build a quantizer from plain data: ``{"kind": "vq", **kwargs}`` (``kind`` from ``QUANTIZERS``)."""
    return QUANTIZERS.build(config)


__all__ = [
    "BSQ", "FSQ", "LFQ", "QUANTIZERS", "BernoulliQuantizer", "ContinuousBottleneck", "DualCodebookQuantizer",
    "GaussianBottleneck",
    "MultiCodebookQuantizer", "Quantizer", "QuantizerOutput", "ResidualQuantizer", "VectorQuantizer",
    "build_quantizer",
]
