"""What an encoder and a decoder must provide: the contract every tokenizer family implements.

A family is an :class:`Encoder` and a :class:`Decoder` registered by ``kind`` (``ENCODERS`` / ``DECODERS`` in
:mod:`vtok.tokenizers.tokenizer`); the bottleneck between them is any :class:`~vtok.quantizers.Quantizer`.
Tensors are channels last: an image's tokens have a *layout*, ``(h, w)`` for a 2D grid or ``(n,)`` for a 1D
sequence, and features are ``(B, *layout, D)``.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import Tensor, nn


class Encoder(nn.Module):
    """Images ``(B, C, H, W)`` in ``[-1, 1]`` -> features ``(B, *layout, out_dim)`` for the bottleneck.

    Subclasses set ``out_dim`` and ``feature_names`` and implement :meth:`grid_shape` and
    :meth:`forward_features`.

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


class Decoder(nn.Module):
    """Latents ``(B, *layout, in_dim)`` -> images ``(B, C, H, W)`` in about ``[-1, 1]``.

    Attributes:
        takes_lengths: ``forward`` accepts ``lengths`` ``(B,)``: each image keeps only its first ``lengths[b]``
            tokens (1D sequences). Grid decoders do not.
        fixed_size: the one image side a decoder writes whatever its input (1D tokens carry no grid), or
            ``None`` when the output size follows the layout.
        condition_dim: size of the conditioning vector ``forward`` reads (as the encoder's), or ``None``.
    """

    takes_lengths: bool = False
    fixed_size: int | None = None
    condition_dim: int | None = None

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
        conditioned) -> ``(B, C, H, W)``."""
        raise NotImplementedError
