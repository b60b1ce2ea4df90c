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
