"""What an encoder and a decoder must provide: the contract every tokenizer family implements.

A family is an :class:`Encoder` and a :class:`Decoder` registered by ``kind`` (``ENCODERS`` / ``DECODERS`` in
:mod:`vtok.tokenizers.tokenizer`); the bottleneck between them is any :class:`~vtok.quantizers.Quantizer`.
Tensors are channels last: an image's tokens have a *layout*, ``(h, w)`` for a 2D grid or ``(n,)`` for a 1D
sequence, and features are ``(B, *layout, D)``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vtok.modules.flow import SamplerSettings


@dataclass
class EncoderOutput:
    """What :meth:`Encoder.forward_tokens` returns.

    Attributes:
        features: ``(B, *layout, out_dim)`` for the bottleneck.
        named: ``{name: (B, *grid, width)}``, the intermediate features asked for.
        lengths: ``(B,)`` tokens each image keeps, for encoders that choose the count per image (LaVIT): the kept
            tokens come first, positions at or after ``lengths[b]`` are padding. ``None``: the whole layout.
        losses: the encoder's own weighted losses (a keep-ratio target), added to the bottleneck's.
        stats: detached statistics for logging.
    """

    features: Tensor
    named: dict[str, Tensor] = field(default_factory=dict)
    lengths: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)


class Encoder(nn.Module):
    """Images ``(B, C, H, W)`` in ``[-1, 1]`` -> features ``(B, *layout, out_dim)`` for the bottleneck.

    Subclasses set ``out_dim`` and ``feature_names`` and implement :meth:`grid_shape` and
    :meth:`forward_features`; an encoder that chooses each image's token count (or has losses of its own)
    overrides :meth:`forward_tokens` too, which is what the tokenizer calls.

    Attributes:
        out_dim: size ``D`` of the features handed to the bottleneck.
        feature_names: names of the intermediate features :meth:`forward_features` can return, shallow to deep;
            what semantic losses and dual codebooks read (e.g. ``"level0"``, ``"block3"``).
        condition_dim: size of the ``(B, condition_dim)`` conditioning vector (a caption's embedding, TexTok)
            that ``forward_features`` reads, or ``None`` for encoders that read images alone.
    """

    out_dim: int
    feature_names: tuple[str, ...] = ()
    condition_dim: int | None = None

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, ...]:
        """The token layout, ``(h, w)`` or ``(n,)``, for an image of ``(H, W)`` pixels."""
        raise NotImplementedError

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, C, H, W)`` -> (features ``(B, *layout, out_dim)``, ``{name: (B, *grid, width)}`` for ``names``).

        Raises:
            KeyError: a name that is not in ``feature_names``.
            ValueError: a ``condition`` given to an encoder without ``condition_dim`` (or missing for one with it).
        """
        raise NotImplementedError

    def forward_tokens(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                       ) -> EncoderOutput:
        """``(B, C, H, W)`` -> :class:`EncoderOutput` (by default :meth:`forward_features`, every token kept)."""
        features, named = self.forward_features(images, names, condition)
        return EncoderOutput(features, named)

    def forward(self, images: Tensor, condition: Tensor | None = None) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, *layout, out_dim)``."""
        return self.forward_features(images, (), condition)[0]

    def _check_names(self, names: Collection[str], condition: Tensor | None = None) -> None:
        unknown = sorted(set(names) - set(self.feature_names))
        if unknown:
            raise KeyError(f"{type(self).__name__} has no features {unknown}; it exposes {list(self.feature_names)}")
        check_condition(self, condition)


def check_condition(part: Encoder | Decoder, condition: Tensor | None) -> None:
    """Raise unless ``condition`` is given exactly when ``part`` reads one."""
    if condition is not None and part.condition_dim is None:
        raise ValueError(f"{type(part).__name__} reads no conditioning (this tokenizer takes no text)")
    if condition is None and part.condition_dim is not None:
        raise ValueError(f"{type(part).__name__} is conditioned on a ({part.condition_dim},)-vector per image (a "
                         "caption's embedding): pass text=...")


@dataclass
class DecoderLoss:
    """What a generative decoder's :meth:`Decoder.training_loss` returns.

    Attributes:
        loss: the decoder's own training loss (a scalar), which takes the place of pixel losses.
        estimate: ``(B, C, H, W)`` the decoder's one-pass guess of the images, logged as the reconstruction.
        features: ``{name: (B, h, w, width)}`` intermediate decoder features asked for (``feature_names``), for
            terms that align them with a teacher (REPA).
    """

    loss: Tensor
    estimate: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


class Decoder(nn.Module):
    """Latents ``(B, *layout, in_dim)`` -> images ``(B, C, H, W)`` in about ``[-1, 1]``.

    Two kinds. A deterministic decoder maps latents to one image and trains on the pixel losses of that image.
    A *generative* decoder (``generative = True``, e.g. a rectified flow) samples an image given the latents:
    its ``forward`` integrates from seeded noise with :class:`~vtok.modules.flow.SamplerSettings` (``sampling``,
    the defaults saved with the decoder's config, or the caller's), and it trains through :meth:`training_loss`,
    which the tokenizer calls instead of decoding.

    Attributes:
        takes_lengths: ``forward`` accepts ``lengths`` ``(B,)``: each image keeps only its first ``lengths[b]``
            tokens (1D sequences). Grid decoders do not.
        fixed_size: the one image side a decoder writes whatever its input (1D tokens carry no grid), or
            ``None`` when the output size follows the layout.
        condition_dim: size of the conditioning vector ``forward`` reads (as the encoder's), or ``None``.
        generative: ``forward`` samples (and reads ``sampling=``); training uses :meth:`training_loss`.
        sampling: a generative decoder's default sampler settings; ``None`` for deterministic decoders.
        feature_names: intermediate features :meth:`training_loss` can return (``block3``, ...).
    """

    takes_lengths: bool = False
    fixed_size: int | None = None
    condition_dim: int | None = None
    generative: bool = False
    sampling: SamplerSettings | None = None
    feature_names: tuple[str, ...] = ()

    @property
    def flexible(self) -> bool:
        """Whether training made every prefix of the token sequence decodable (nested dropout)."""
        return False

    @property
    def last_layer(self) -> Tensor:
        """Weight of the output layer, where the adaptive GAN weight compares gradients."""
        raise NotImplementedError

    def forward(self, latents: Tensor, lengths: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """``(B, *layout, in_dim)`` (and ``(B,)`` lengths where ``takes_lengths``, ``(B, condition_dim)`` where
        conditioned) -> ``(B, C, H, W)``. Generative decoders also take ``sampling: SamplerSettings | None``."""
        raise NotImplementedError

    def training_loss(self, latents: Tensor, images: Tensor, lengths: Tensor | None = None,
                      features: Collection[str] = (), generator: torch.Generator | None = None) -> DecoderLoss:
        """A generative decoder's loss for ``(B, *layout, in_dim)`` latents of ``(B, C, H, W)`` images.

        ``generator`` (a CPU generator) draws the loss's noise and times, for a reproducible held-out loss; without
        it they come from the global RNG (resumed exactly like every other random draw of a run).
        """
        raise TypeError(f"{type(self).__name__} is deterministic: it trains on pixel losses of its reconstruction")
