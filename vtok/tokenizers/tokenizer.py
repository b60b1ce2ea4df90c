"""``Tokenizer``: encoder + bottleneck + decoder, built from plain data.

A tokenizer's whole definition is a dict such as::

    {"encoder": {"kind": "conv", ...}, "quantizer": {"kind": "vq", ...}, "decoder": {"kind": "conv", ...}}

Every ``kind`` is looked up in an allowlist (``ENCODERS``, ``DECODERS``, ``QUANTIZERS``), so a config never
names an import path and loading a saved tokenizer never runs code the file chooses.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from vtok.quantizers import QuantizerOutput, build_quantizer

from .conv import ConvDecoder, ConvEncoder
from .tokens import TokenizerOutput, Tokens

ENCODERS: dict[str, type[nn.Module]] = {"conv": ConvEncoder}
DECODERS: dict[str, type[nn.Module]] = {"conv": ConvDecoder}


def _build(registry: dict[str, type[nn.Module]], role: str, config: dict[str, Any], **defaults: Any) -> nn.Module:
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in registry:
        raise ValueError(f"unknown {role} kind {kind!r}; choose one of {sorted(registry)}")
    return registry[kind](**{**defaults, **config})


def _plain(value: Any) -> Any:
    """Nested mappings and sequences -> dicts and lists (accepts OmegaConf containers without importing it)."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


class Tokenizer(nn.Module):
    """Images in ``[-1, 1]`` to tokens and back.

    Args:
        encoder: ``{"kind": ..., **kwargs}`` for the encoder; its ``out_dim`` sets the bottleneck size.
        quantizer: ``{"kind": ..., **kwargs}``; ``dim`` defaults to the encoder's ``out_dim``.
        decoder: ``{"kind": ..., **kwargs}``; ``in_dim`` defaults to the bottleneck size.
        image_size: training resolution, used by ``num_tokens()`` when no size is given.
    """

    def __init__(
        self,
        encoder: dict[str, Any],
        quantizer: dict[str, Any],
        decoder: dict[str, Any],
        image_size: int = 256,
    ) -> None:
        super().__init__()
        encoder, quantizer, decoder = _plain(encoder), _plain(quantizer), _plain(decoder)
        self.encoder = _build(ENCODERS, "encoder", encoder)
        quantizer.setdefault("dim", self.encoder.out_dim)
        self.quantizer = build_quantizer(quantizer)
        self.decoder = _build(DECODERS, "decoder", decoder, in_dim=self.quantizer.dim)
        self.image_size = image_size
        self._config = {
            "encoder": encoder,
            "quantizer": quantizer,
            "decoder": decoder,
            "image_size": image_size,
        }

    @property
    def config(self) -> dict[str, Any]:
        """Plain-data definition: ``Tokenizer(**tokenizer.config)`` rebuilds the same architecture."""
        return copy.deepcopy(self._config)

    @property
    def vocab_size(self) -> int | None:
        """Number of distinct token ids, ``None`` for continuous tokenizers."""
        return self.quantizer.codebook_size

    @property
    def bits_per_token(self) -> float:
        return self.quantizer.bits_per_token

    def num_tokens(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Tokens per image of ``image_size`` (default: the training size)."""
        size = image_size or self.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return int(torch.tensor(self.encoder.grid_shape(size)).prod())

    def _tokenize(self, images: Tensor) -> tuple[Tokens, QuantizerOutput]:
        features = self.encoder(images)
        q = self.quantizer(features)
        return Tokens(indices=q.indices, latents=q.quantized, layout=tuple(features.shape[1:-1])), q

    def forward(self, images: Tensor) -> TokenizerOutput:
        """``(B, C, H, W)`` images -> reconstruction, tokens, bottleneck losses and stats."""
        tokens, q = self._tokenize(images)
        return TokenizerOutput(self.decoder(tokens.latents), tokens, q.losses, q.stats)

    def encode(self, images: Tensor) -> Tokens:
        """``(B, C, H, W)`` images in ``[-1, 1]`` -> tokens (indices ``(B, *layout)``, latents ``(B, *layout, D)``)."""
        return self._tokenize(images)[0]

    def decode(self, tokens: Tokens) -> Tensor:
        """Tokens -> ``(B, C, H, W)`` images in about ``[-1, 1]``."""
        return self.decoder(tokens.latents)

    def embed(self, indices: Tensor) -> Tensor:
        """``(B, *layout)`` ids -> ``(B, *layout, D)`` codebook vectors (what the decoder reads)."""
        return self.quantizer.indices_to_codes(indices)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """``(B, *layout)`` ids -> ``(B, C, H, W)`` images."""
        return self.decoder(self.embed(indices))

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output layer (for the adaptive GAN weight)."""
        return self.decoder.last_layer
