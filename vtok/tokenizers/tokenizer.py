"""``Tokenizer``: encoder + bottleneck + decoder, built from plain data.

A tokenizer's whole definition is a dict such as::

    {"encoder": {"kind": "conv", ...}, "quantizer": {"kind": "vq", ...}, "decoder": {"kind": "conv", ...}}

Every ``kind`` is looked up in an allowlist (``ENCODERS``, ``DECODERS``, ``QUANTIZERS``), so a config never
names an import path and loading a saved tokenizer never runs code the file chooses.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vtok.images import psnr
from vtok.modules.flow import SamplerSettings
from vtok.quantizers import QuantizerOutput, build_quantizer

from .parts import Decoder, DecoderLoss, Encoder, EncoderOutput
from .registry import DECODERS, ENCODERS, EXPANDERS, FAMILIES
from .serialization import load_pretrained, save_pretrained
from .tokens import TokenizerOutput, Tokens


def plain_data(value: Any) -> Any:
    """Nested mappings and sequences -> dicts and lists (OmegaConf's containers are both, so no import)."""
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain_data(v) for v in value]
    return value


@FAMILIES.register("Tokenizer")
class Tokenizer(nn.Module):
    """Images in ``[-1, 1]`` to tokens and back.

    Args:
        encoder: ``{"kind": ..., **kwargs}`` for the encoder; its ``out_dim`` sets the bottleneck size.
        quantizer: ``{"kind": ..., **kwargs}``; ``dim`` defaults to the encoder's ``out_dim``.
        decoder: ``{"kind": ..., **kwargs}``; ``in_dim`` defaults to the bottleneck (or expander) size.
        image_size: training resolution, used by ``num_tokens()`` when no size is given.
        expander: optional ``{"kind": "transformer", ...}`` stage between bottleneck and decoder (MingTok-style
            semantic expansion); its output is ``TokenizerOutput.features["expanded"]``.
        scaling_factor, shift_factor: how latent diffusion models see the latents,
            ``(latents - shift_factor) * scaling_factor`` (:meth:`to_diffusion`; SD-VAE: 0.18215 and 0). They do not
            change ``encode`` / ``decode``; they travel with the tokenizer (``config.json``, diffusers export).
    """

    def __init__(
        self,
        encoder: dict[str, Any],
        quantizer: dict[str, Any],
        decoder: dict[str, Any],
        image_size: int = 256,
        expander: dict[str, Any] | None = None,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ) -> None:
        super().__init__()
        encoder, quantizer, decoder, expander = (plain_data(part) for part in (encoder, quantizer, decoder, expander))
        self.encoder: Encoder = ENCODERS.build(encoder)
        quantizer.setdefault("dim", self.encoder.out_dim)
        self.quantizer = build_quantizer(quantizer)
        latent_dim = self.quantizer.decoder_dim
        self.expander = EXPANDERS.build(expander, in_dim=latent_dim) if expander else None
        self.decoder: Decoder = DECODERS.build(
            decoder, in_dim=self.expander.out_dim if self.expander else latent_dim)
        self.image_size = image_size
        self._config = {
            "encoder": encoder,
            "quantizer": quantizer,
            "decoder": decoder,
            "image_size": image_size,
        }
        if expander:
            self._config["expander"] = expander
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)
        if (scaling_factor, shift_factor) != (1.0, 0.0):  # configs of tokenizers without them stay as they were
            self._config.update(scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)

    @classmethod
    def from_pretrained(cls, path_or_repo: str, device: str = "cpu", revision: str | None = None) -> Tokenizer:
        """Load an exported tokenizer (folder or Hugging Face repo id); see :mod:`vtok.tokenizers.serialization`."""
        tokenizer = load_pretrained(path_or_repo, device=device, revision=revision)
        if not isinstance(tokenizer, cls):
            raise TypeError(f"{path_or_repo} holds a {type(tokenizer).__name__}, not a {cls.__name__}")
        return tokenizer

    @classmethod
    def from_published(cls, path: str, format: str = "auto", image_size: int | None = None) -> Tokenizer:
        """A tokenizer a paper or library published (a diffusers folder, an LDM / Stable Diffusion or taming
        checkpoint), read with ``weights_only`` pickling; see :mod:`vtok.published`."""
        from vtok.published import from_published

        return from_published(path, format=format, image_size=image_size)[0]

    def save_pretrained(self, out_dir: str, extra: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` (plain data) and ``model.safetensors`` into ``out_dir``."""
        save_pretrained(self, out_dir, extra)

    def to_diffusion(self, latents: Tensor) -> Tensor:
        """``Tokens.latents`` ``(B, h, w, C)`` -> what a latent diffusion model is trained on,
        ``(latents - shift_factor) * scaling_factor``."""
        return (latents - self.shift_factor) * self.scaling_factor

    def from_diffusion(self, latents: Tensor) -> Tensor:
        """The inverse of :meth:`to_diffusion`: a diffusion model's sample -> latents :meth:`decode` reads."""
        return latents / self.scaling_factor + self.shift_factor

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
        return math.prod(self.encoder.grid_shape(size))

    @property
    def flexible(self) -> bool:
        """Whether any prefix of the token sequence decodes (1D tokenizers trained with nested dropout)."""
        return self.decoder.flexible

    @property
    def fixed_size(self) -> int | None:
        """The one image side this tokenizer decodes to (1D tokens carry no grid), ``None`` for any size."""
        return self.decoder.fixed_size

    @property
    def generative(self) -> bool:
        """Whether decoding samples (a flow decoder): ``decode`` then takes ``steps``, ``guidance``, ``seed`` and
        ``solver``, and training uses the decoder's own loss."""
        return self.decoder.generative

    @property
    def sampling(self) -> SamplerSettings | None:
        """A generative decoder's default sampler settings (from its config); ``None`` for deterministic ones."""
        return self.decoder.sampling

    @property
    def condition_dim(self) -> int | None:
        """Size of the per-image conditioning vector (a caption's embedding, TexTok) that ``encode`` and ``decode``
        read as ``text=``; ``None`` when the tokenizer reads images alone."""
        return self.encoder.condition_dim

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names ``forward(images, features=...)`` accepts: ``encoder`` (what enters the bottleneck),
        ``quantized`` (what leaves it), ``quantized.PART`` for each part of a dual codebook (``semantic``,
        ``pixel``), ``expanded`` (with an expander), ``encoder.NAME`` for each of the encoder's own features and,
        for a generative decoder, ``decoder.NAME``: its features of the noisy image (what REPA-style terms align
        to a teacher)."""
        decoder = self.decoder.feature_names if self.decoder.generative else ()
        names = ("encoder", "quantized", *(f"quantized.{p}" for p in self.quantizer.codebook_parts),
                 *(f"encoder.{n}" for n in self.encoder.feature_names), *(f"decoder.{n}" for n in decoder))
        return (*names, "expanded") if self.expander is not None else names

    def _tokenize(self, images: Tensor, encoder_features: Collection[str] = (), text: Tensor | None = None
                  ) -> tuple[Tokens, QuantizerOutput, EncoderOutput]:
        encoded = self.encoder.forward_tokens(images, encoder_features, text)
        q = self.quantizer(encoded.features)
        tokens = Tokens(indices=q.indices, latents=q.quantized, layout=tuple(encoded.features.shape[1:-1]),
                        lengths=encoded.lengths, condition=text)
        return tokens, q, encoded

    def _decoder_input(self, latents: Tensor) -> tuple[Tensor, Tensor | None]:
        inputs = self.quantizer.decoder_input(latents)
        expanded = self.expander(inputs) if self.expander is not None else None
        return (expanded if expanded is not None else inputs), expanded

    def _decode_latents(self, latents: Tensor, lengths: Tensor | None = None, text: Tensor | None = None,
                        sampling: SamplerSettings | None = None) -> tuple[Tensor, Tensor | None]:
        inputs, expanded = self._decoder_input(latents)
        if lengths is not None and not self.decoder.takes_lengths:
            raise ValueError(f"{type(self.decoder).__name__} decodes whole grids; per-image lengths need a "
                             "1D latent-token decoder")
        extra: dict[str, Tensor] = {"lengths": lengths} if lengths is not None else {}
        if self.decoder.condition_dim is not None:
            if text is None:
                raise ValueError("this tokenizer decodes conditioned on a caption embedding: pass text=...")
            extra["condition"] = text
        if self.decoder.generative:
            extra["sampling"] = sampling
        return self.decoder(inputs, **extra), expanded

    def decoder_loss(self, tokens: Tokens, images: Tensor, features: Collection[str] = (),
                     generator: torch.Generator | None = None) -> DecoderLoss:
        """A generative decoder's training loss for ``tokens`` of ``(B, C, H, W)`` ``images`` (``features``:
        decoder feature names without the ``decoder.`` prefix; ``generator``: a CPU generator for the noise and
        times, for a reproducible held-out loss)."""
        if not self.decoder.generative:
            raise TypeError(f"the {type(self.decoder).__name__} is deterministic: it has no decoder loss")
        inputs = self._decoder_input(tokens.latents)[0]
        return self.decoder.training_loss(inputs, images, tokens.lengths, features, generator)

    def sampler_settings(self, steps: int | None = None, guidance: float | None = None, seed: int | None = None,
                         solver: str | None = None) -> SamplerSettings | None:
        """The decoder's default sampler settings with the given ones replaced; ``None`` for a deterministic
        decoder, which refuses any of them."""
        given = {k: v for k, v in dict(steps=steps, guidance=guidance, seed=seed, solver=solver).items()
                 if v is not None}
        if self.decoder.sampling is None:
            if given:
                raise ValueError(f"{sorted(given)}: this tokenizer's {type(self.decoder).__name__} is deterministic; "
                                 "sampler settings apply to generative decoders (decoder.kind=flow)")
            return None
        return dataclasses.replace(self.decoder.sampling, **given)

    def forward(self, images: Tensor, features: Collection[str] = (), text: Tensor | None = None
                ) -> TokenizerOutput:
        """``(B, C, H, W)`` images -> reconstruction, tokens, bottleneck losses and stats.

        Args:
            features: names from :attr:`feature_names` to return in ``TokenizerOutput.features`` (channels
                last, ``(B, *grid, D)``), for losses that supervise them. ``expanded`` is always returned when
                there is an expander.
            text: ``(B, condition_dim)`` caption embeddings for a conditioned tokenizer (see ``condition_dim``).
        """
        unknown = sorted(set(features) - set(self.feature_names))
        if unknown:
            raise KeyError(f"unknown tokenizer features {unknown}; this tokenizer has {list(self.feature_names)}")
        wanted = {name.removeprefix("encoder.") for name in features if name.startswith("encoder.")}
        tokens, q, encoder_output = self._tokenize(images, wanted, text)
        encoded = encoder_output.features
        named = {f"encoder.{name}": value for name, value in encoder_output.named.items()}
        decoder_losses: dict[str, Tensor] = {}
        if self.decoder.generative:  # no decode: the flow trains on its velocity at a random time
            decoder_wanted = [n.removeprefix("decoder.") for n in features if n.startswith("decoder.")]
            inputs, expanded = self._decoder_input(tokens.latents)
            result = self.decoder.training_loss(inputs, images, tokens.lengths, decoder_wanted)
            reconstruction, decoder_losses["flow"] = result.estimate, result.loss
            named.update({f"decoder.{name}": value for name, value in result.features.items()})
        else:
            reconstruction, expanded = self._decode_latents(tokens.latents, tokens.lengths, text=text)
        named.update({"encoder": encoded, "quantized": tokens.latents})
        named.update({f"quantized.{p}": self.quantizer.select(tokens.latents, p)
                      for p in self.quantizer.codebook_parts})
        if expanded is not None:
            named["expanded"] = expanded
        kept = {name: named[name] for name in (*features, *(("expanded",) if expanded is not None else ()))}
        return TokenizerOutput(reconstruction, tokens, {**q.losses, **encoder_output.losses},
                               {**q.stats, **encoder_output.stats}, kept, decoder_losses)

    def encode(self, images: Tensor, num_tokens: int | None = None, target_psnr: float | None = None,
               text: Tensor | None = None) -> Tokens:
        """``(B, C, H, W)`` images in ``[-1, 1]`` -> tokens (indices ``(B, *layout)``, latents ``(B, *layout, D)``).

        Args:
            images: the batch.
            num_tokens: keep only the first ``k`` tokens (1D tokenizers): layout ``(k,)``.
            target_psnr: per image, the fewest leading tokens whose reconstruction reaches this PSNR (dB, on
                ``[-1, 1]`` floats), found by bisection over ``k`` (which assumes quality rises with ``k``, as
                nested-dropout training makes it). Images that never reach it keep all tokens. The result keeps
                the full layout and sets ``lengths`` ``(B,)``.
            text: ``(B, condition_dim)`` caption embeddings for a conditioned tokenizer (TexTok); kept in
                ``Tokens.condition`` so that ``decode`` reads them too.
        """
        tokens = self._tokenize(images, text=text)[0]
        if num_tokens is None and target_psnr is None:
            return tokens
        if len(tokens.layout) != 1:
            raise ValueError(f"num_tokens / target_psnr need a 1D tokenizer; this one has a {tokens.layout} grid")
        if num_tokens is not None:
            if not 1 <= num_tokens <= tokens.layout[0]:
                raise ValueError(f"num_tokens={num_tokens} must lie in 1..{tokens.layout[0]}")
            indices = tokens.indices[:, :num_tokens] if tokens.indices is not None else None
            tokens = Tokens(indices, tokens.latents[:, :num_tokens], (num_tokens,), condition=text)
        if target_psnr is not None:
            tokens.lengths = self._smallest_lengths(images, tokens.latents, target_psnr, text)
        return tokens

    def _smallest_lengths(self, images: Tensor, latents: Tensor, target_psnr: float, text: Tensor | None
                          ) -> Tensor:
        low = torch.ones(len(images), dtype=torch.long, device=images.device)
        high = torch.full_like(low, latents.shape[1])
        while bool((low < high).any()):
            middle = (low + high) // 2
            reconstruction = self._decode_latents(latents, lengths=middle, text=text)[0].clamp(-1, 1)
            reached = psnr(reconstruction, images, eight_bit=False) >= target_psnr
            open_ = low < high
            high = torch.where(open_ & reached, middle, high)
            low = torch.where(open_ & ~reached, middle + 1, low)
        return low

    def decode(self, tokens: Tokens, steps: int | None = None, guidance: float | None = None,
               seed: int | None = None, solver: str | None = None) -> Tensor:
        """Tokens -> ``(B, C, H, W)`` images in about ``[-1, 1]``.

        A generative decoder samples: ``steps`` (ODE steps), ``guidance`` (classifier-free scale, 1.0 = none),
        ``seed`` (same seed, same images) and ``solver`` (``euler`` | ``heun``) default to :attr:`sampling`, the
        values saved with the tokenizer. A deterministic decoder refuses them.
        """
        settings = self.sampler_settings(steps, guidance, seed, solver)
        return self._decode_latents(tokens.latents, tokens.lengths, tokens.condition, settings)[0]

    def embed(self, indices: Tensor, which: str | None = None) -> Tensor:
        """``(B, *layout)`` ids -> ``(B, *layout, D)`` code vectors, exactly ``encode``'s ``latents``.

        Args:
            which: for dual codebooks, ``"semantic"``, ``"pixel"`` or ``"both"`` (the default: the whole code
                vector, semantic channels first); see the quantizer's ``codebook_parts``.
        """
        codes = self.quantizer.indices_to_codes(indices)
        return codes if which is None else self.quantizer.select(codes, which)

    def decode_indices(self, indices: Tensor, lengths: Tensor | None = None, text: Tensor | None = None,
                       **sampling: Any) -> Tensor:
        """``(B, *layout)`` ids (and optional ``(B,)`` lengths, ``(B, condition_dim)`` text) -> images; ``sampling``
        as :meth:`decode`'s."""
        return self._decode_latents(self.embed(indices), lengths, text, self.sampler_settings(**sampling))[0]

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output layer (for the adaptive GAN weight)."""
        return self.decoder.last_layer
