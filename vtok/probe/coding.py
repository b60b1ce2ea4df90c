"""Entropy coding of token sequences with a prior's probabilities: real bitstreams, through ``constriction``'s range
coder (a maintained library, not a hand-written coder).

Encoding reads the probabilities of the whole sequence at once (each position's given the true prefix); decoding
recomputes them position by position from the prefix it has decoded so far, so it is exact only if the prior
gives the same probabilities both ways: the same weights, device and precision on both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def _coder():
    try:
        from constriction import stream
    except ImportError as error:  # an optional dependency: pip install constriction (pure wheel, no network after)
        raise ImportError("entropy coding needs the `constriction` package: pip install constriction") from error
    return stream


def _as_rows(probabilities: Tensor) -> np.ndarray:
    # constriction's Categorical(perfect=False) takes float32 rows and makes every symbol codable (p > 0)
    rows = probabilities.detach().double().cpu().numpy()
    return (rows / rows.sum(axis=-1, keepdims=True)).astype(np.float32)


def encode_sequence(probabilities: Tensor, ids: Tensor) -> bytes:
    """``(N, V)`` probabilities of each position and the ``(N,)`` ids -> the range-coded bytes."""
    stream = _coder()
    encoder = stream.queue.RangeEncoder()
    if len(ids):
        encoder.encode(ids.detach().cpu().numpy().astype(np.int32), stream.model.Categorical(perfect=False),
                       _as_rows(probabilities))
    return encoder.get_compressed().tobytes()


def decode_sequence(data: bytes, length: int, next_probabilities: Callable[[Tensor], Tensor]) -> Tensor:
    """Bytes from :func:`encode_sequence` -> the ``(length,)`` ids, asking ``next_probabilities(prefix)`` for the
    ``(V,)`` probabilities of the next id given the ``(i,)`` ids decoded so far."""
    stream = _coder()
    decoder = stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32).copy())
    family = stream.model.Categorical(perfect=False)
    ids: list[int] = []
    for _ in range(length):
        row = _as_rows(next_probabilities(torch.tensor(ids, dtype=torch.long))[None])
        ids.append(int(decoder.decode(family, row)[0]))
    return torch.tensor(ids, dtype=torch.long)


def ideal_bits(probabilities: Tensor, ids: Tensor) -> float:
    """``sum -log2 p(id)``: what an ideal coder would spend on ``(N,)`` ids under ``(N, V)`` probabilities."""
    picked = probabilities.double().gather(-1, ids.long()[:, None]).clamp(min=1e-300)
    return float(-(picked.log2()).sum()) if len(ids) else 0.0


def coded_bits(data: bytes) -> int:
    """Bits in a coded sequence (whole 32-bit words, as the coder writes them)."""
    return 8 * len(data)

