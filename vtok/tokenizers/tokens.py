"""The dataclasses that cross the tokenizer API."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Tokens:
    """What ``Tokenizer.encode`` returns.

    Attributes:
        indices: ``(B, *layout)`` long token ids, or ``None`` for continuous tokenizers.
        latents: ``(B, *layout, D)`` quantized (or continuous) vectors that the decoder reads.
        layout: token layout per image: ``(h, w)`` for a 2D grid, ``(n,)`` for a 1D sequence.
        lengths: ``(B,)`` tokens each image keeps (1D tokenizers with a per-image budget); positions at or
            after ``lengths[b]`` are ignored by the decoder. ``None``: every image uses the whole layout.
        condition: ``(B, condition_dim)`` caption embeddings the tokens were encoded with (conditioned
            tokenizers, TexTok), which decoding reads too; ``None`` otherwise.
    """

    indices: Tensor | None
    latents: Tensor
    layout: tuple[int, ...]
    lengths: Tensor | None = None
    condition: Tensor | None = None


@dataclass
class TokenizerOutput:
    """What ``Tokenizer.forward`` returns during training.

    Attributes:
        reconstruction: ``(B, C, H, W)`` decoded images.
        tokens: the tokens the images were encoded to.
        losses: weighted bottleneck losses (commitment, entropy, KL, ...).
        stats: detached statistics for logging.
        features: intermediate features other losses may supervise, by name (``Tokenizer.feature_names``:
            ``encoder``, ``quantized``, ``encoder.NAME``, ``expanded``, ``decoder.NAME``), channels last.
        decoder_losses: a generative decoder's own training losses (the flow loss), which take the place of pixel
            losses; ``reconstruction`` is then the decoder's one-pass estimate of the images. Empty otherwise.
    """

    reconstruction: Tensor
    tokens: Tokens
    losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)
    features: dict[str, Tensor] = field(default_factory=dict)
    decoder_losses: dict[str, Tensor] = field(default_factory=dict)


def token_sequences(tokens: Tokens) -> list[Tensor]:
    """One id sequence per image, in the order a sequence model (a prior, an LLM) reads them: 2D grids row by
    row, 1D sequences in their order, several ids per position (residual or multi-codebook quantizers,
    ``indices`` ``(B, *layout, depth)``) position by position with each position's ids in depth order, and only
    the kept prefix of images with ``lengths``.

    ``Tokens`` with ``indices`` ``(B, *layout)`` or ``(B, *layout, depth)`` -> ``B`` long tensors ``(N_b,)``.

    Raises:
        ValueError: continuous tokens (no ids).
    """
    if tokens.indices is None:
        raise ValueError("token sequences need discrete tokens: this tokenizer is continuous (no token ids)")
    indices = tokens.indices
    per_position = indices.shape[1 + len(tokens.layout):].numel() if indices.ndim > 1 + len(tokens.layout) else 1
    flat = indices.reshape(indices.shape[0], -1).long()
    if tokens.lengths is None:
        return list(flat)
    return [row[: int(length) * per_position] for row, length in zip(flat, tokens.lengths.tolist())]
