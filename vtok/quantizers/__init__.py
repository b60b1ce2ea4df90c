"""Bottlenecks behind one interface: ``forward(z) -> QuantizerOutput``.

``QUANTIZERS`` is the allowlist that configs and exported checkpoints name by ``kind``.
"""

from __future__ import annotations

from typing import Any

from .base import Quantizer, QuantizerOutput
from .vq import VectorQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {
    "vq": VectorQuantizer,
}


def build_quantizer(config: dict[str, Any]) -> Quantizer:
    """Build a quantizer from plain data: ``{"kind": "vq", **kwargs}``."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantizer kind {kind!r}; choose one of {sorted(QUANTIZERS)}")
    return QUANTIZERS[kind](**config)


__all__ = ["QUANTIZERS", "Quantizer", "QuantizerOutput", "VectorQuantizer", "build_quantizer"]
