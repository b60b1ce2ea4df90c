"""A tokenizer's tokens as one id sequence per image: the order an autoregressive prior reads them.

2D grids are read in raster order (row by row); 1D sequences in their own order; several ids per position
(residual or multi-codebook quantizers, ``indices`` ``(B, *layout, depth)``) position by position, each position's
ids in their depth order, which is the id layout those quantizers document. Images that keep only a prefix
(``Tokens.lengths``: flexible and dynamic-length tokenizers) give shorter sequences.
"""

from __future__ import annotations

from torch import Tensor

from vtok.tokenizers import Tokens


def token_sequences(tokens: Tokens) -> list[Tensor]:
    """``Tokens`` with ``indices`` ``(B, *layout)`` or ``(B, *layout, depth)`` -> ``B`` long tensors ``(N_b,)``.

    Raises:
        ValueError: continuous tokens (no ids to model).
    """
    if tokens.indices is None:
        raise ValueError("the probe models discrete tokens: this tokenizer is continuous (no token ids)")
    indices = tokens.indices
    per_position = indices.shape[1 + len(tokens.layout):].numel() if indices.ndim > 1 + len(tokens.layout) else 1
    flat = indices.reshape(indices.shape[0], -1).long()
    if tokens.lengths is None:
        return list(flat)
    return [row[: int(length) * per_position] for row, length in zip(flat, tokens.lengths.tolist())]
