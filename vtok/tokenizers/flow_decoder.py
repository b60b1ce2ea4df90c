"""A rectified-flow decoder: tokens -> a velocity model over noisy image patches, sampled from seeded noise.

FlexTok's decoder idea, in pixel space: a transformer reads the token sequence (any prefix of it, or none) and
the patches of a noisy image ``x_t`` in one sequence, the time ``t`` modulating every block (adaLN), and predicts
the velocity ``noise - image``. Decoding integrates from noise to an image (:mod:`vtok.modules.flow`), so a
short prefix still gives a sharp, plausible image instead of the blurred mean a deterministic decoder regresses
to. Any token layout works: a 1D sequence, a set (slots: ``token_positions: false``) or a flattened 2D grid.

The network predicts the clean image and the velocity follows, ``(x_t - image) / t`` (``prediction: image``, as
JiT argues for pixel space): a patch of noise has more dimensions than the transformer's width, so a network
asked for the velocity (noise minus image) must carry the noise through a bottleneck it cannot, while the
clean image lies near a low-dimensional set. ``prediction: velocity`` is the plain parametrization (latent
spaces, wide models). The loss is the velocity error either way.

Classifier-free guidance needs a prediction without tokens: training replaces the whole sequence by the mask
token for a fraction ``guidance_dropout`` of the images (the same "no tokens" as a zero-length prefix).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor, nn

from vtok.modules.adaln import AdaLNTransformer, TimestepEmbedding
from vtok.modules.flow import WEIGHTINGS, SamplerSettings, flow_loss, guided, integrate, sample_times
from vtok.modules.patches import PatchPositions, unpatchify
from vtok.modules.transformer import block_indices, init_token, patch_grid

from .nested_dropout import NestedDropout, keep_prefixes
from .parts import Decoder, DecoderLoss, check_condition
from .registry import DECODERS

PREDICTIONS = ("image", "velocity")


@DECODERS.register("flow")
class FlowDecoder(Decoder):
    """Tokens ``(B, *layout, in_dim)`` (at most ``num_tokens`` of them) -> images ``(B, C, image_size, image_size)``.

    Args:
        num_tokens: the most tokens it reads (a 2D grid counts ``h * w``).
        in_dim: size of the (quantized) tokens.
        out_channels, patch_size, width, depth, heads, mlp_ratio: the transformer over noisy patches.
        position: positions of the patches, ``learned`` or ``rope``.
        image_size: output resolution.
        token_positions: give tokens learned positions (sequences, grids); ``false`` for sets (slots), whose
            order carries no meaning.
        nested_dropout: as the latent-token decoder's: train on random prefixes so any ``k`` decodes.
        guidance_dropout: fraction of training images decoded with no tokens (classifier-free guidance).
        time_distribution: ``logit_normal`` or ``uniform`` training times.
        time_mean, time_std: the logit-normal's location and scale; a positive mean trains more at high noise,
            where only the tokens tell the image (what makes the encoder learn).
        prediction: what the network outputs, ``image`` (the velocity is derived) or ``velocity``.
        loss_weighting: ``image`` (the velocity error weighted by ``t**2``: the image estimate's error, so the
            noisiest times, where only the tokens tell the image, count as much as the others; a tokenizer's
            decoder must learn to read its tokens) or ``velocity`` (unweighted, as image generators train).
        min_time: with ``prediction: image``, ``t`` is clipped to at least this in ``(x_t - image) / t``.
        sampling: default :class:`~vtok.modules.flow.SamplerSettings` (``steps``, ``guidance``, ``seed``,
            ``solver``), saved in ``config.json`` so an exported tokenizer samples the same way.
        condition_dim: caption conditioning is not supported by this decoder yet (``None``).
    """

    takes_lengths = True
    generative = True

    def __init__(self, num_tokens: int = 128, in_dim: int = 12, out_channels: int = 3, patch_size: int = 16,
                 width: int = 512, depth: int = 8, heads: int = 8, mlp_ratio: float = 4.0, position: str = "learned",
                 image_size: int = 256, token_positions: bool = True, nested_dropout: dict[str, Any] | None = None,
                 guidance_dropout: float = 0.1, time_distribution: str = "logit_normal", time_mean: float = 0.0,
                 time_std: float = 1.0, prediction: str = "image",
                 loss_weighting: str = "image", min_time: float = 0.05, sampling: dict[str, Any] | None = None,
                 condition_dim: int | None = None, condition_tokens: int = 4) -> None:
        super().__init__()
        if condition_dim is not None:
            raise ValueError("decoder.kind=flow reads tokens only: caption conditioning (condition_dim) is not "
                             "supported by the flow decoder yet")
        if not 0.0 <= guidance_dropout < 1.0:
            raise ValueError(f"guidance_dropout={guidance_dropout} must lie in [0, 1)")
        sample_times(1, time_distribution)  # an unknown distribution fails now, not at the first step
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}: use one of {list(PREDICTIONS)}")
        self.prediction, self.min_time, self.loss_weighting = prediction, min_time, loss_weighting
        if loss_weighting not in WEIGHTINGS:
            raise ValueError(f"loss_weighting={loss_weighting!r}: use one of {list(WEIGHTINGS)}")
        self.num_tokens, self.patch_size, self.out_channels = num_tokens, patch_size, out_channels
        self.grid = patch_grid(image_size, patch_size)
        self.fixed_size = image_size
        self.guidance_dropout, self.time_distribution = guidance_dropout, time_distribution
        self.time_mean, self.time_std = time_mean, time_std
        self.sampling = SamplerSettings(**(sampling or {}))
        self.from_tokens = nn.Linear(in_dim, width)
        self.mask_token = init_token((width,))
        self.token_positions = init_token((num_tokens, width)) if token_positions else None
        self.to_patches = nn.Conv2d(out_channels, width, patch_size, stride=patch_size)
        self.positions = PatchPositions(position, self.grid, width, width // heads)
        self.time = TimestepEmbedding(width)
        self.transformer = AdaLNTransformer(width, depth, heads, mlp_ratio)
        self.to_pixels = nn.Linear(width, out_channels * patch_size**2)
        nn.init.zeros_(self.to_pixels.weight)  # the prediction starts at zero
        nn.init.zeros_(self.to_pixels.bias)
        self.nested_dropout = NestedDropout(num_tokens, **nested_dropout) if nested_dropout else None
        self.feature_names = tuple(f"block{i}" for i in range(depth))

    @property
    def flexible(self) -> bool:
        """Whether training made every prefix length decodable."""
        return self.nested_dropout is not None

    @property
    def last_layer(self) -> Tensor:
        return self.to_pixels.weight

    # ------------------------------------------------------------------------------------------- the model
    def embed_tokens(self, latents: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, *layout, in_dim)`` -> ``(B, num_tokens, width)``: positions past ``lengths[b]`` (and past the
        layout) hold the mask token; ``lengths = 0`` is the "no tokens" condition."""
        tokens = latents.flatten(1, -2)
        if tokens.shape[1] > self.num_tokens:
            raise ValueError(f"got {tokens.shape[1]} tokens, the flow decoder reads at most {self.num_tokens}")
        x = keep_prefixes(self.from_tokens(tokens), self.mask_token, self.num_tokens, lengths)
        return x + self.token_positions.to(x.dtype) if self.token_positions is not None else x

    def velocity(self, noisy: Tensor, t: Tensor, condition: Tensor, keep: Collection[int] = ()
                 ) -> tuple[Tensor, dict[int, Tensor]]:
        """``(B, C, H, W)`` noisy images at ``(B,)`` times, ``(B, num_tokens, width)`` embedded tokens ->
        ``(B, C, H, W)`` velocity and ``{i: (B, h, w, width)}`` patch features after block ``i`` for ``keep``."""
        patches = self.to_patches(noisy.to(condition.dtype)).flatten(2).transpose(1, 2)
        patches, rope = self.positions(patches, self.grid, extra_before=self.num_tokens)
        hidden, kept = self.transformer(torch.cat([condition, patches], dim=1), self.time(t).to(condition.dtype),
                                        rope, keep=tuple(keep))
        out = unpatchify(self.to_pixels(hidden[:, self.num_tokens:]), self.grid, self.patch_size).float()
        if self.prediction == "image":  # in fp32 under autocast: the division by a small t magnifies rounding
            out = (noisy.float() - out) / t.float().clamp(min=self.min_time).view(-1, 1, 1, 1)
        return out, {i: h[:, self.num_tokens:].unflatten(1, self.grid) for i, h in kept.items()}

    # ---------------------------------------------------------------------------------------------- training
    def training_loss(self, latents: Tensor, images: Tensor, lengths: Tensor | None = None,
                      features: Collection[str] = (), generator: torch.Generator | None = None) -> DecoderLoss:
        """Rectified-flow loss of ``(B, *layout, in_dim)`` tokens for ``(B, C, H, W)`` images: in training mode with
        nested dropout and guidance dropout; ``features`` names blocks whose patch features to return."""
        unknown = sorted(set(features) - set(self.feature_names))
        if unknown:
            raise KeyError(f"FlowDecoder has no features {unknown}; it exposes {list(self.feature_names)}")
        batch, device = images.shape[0], images.device
        if self.training and self.nested_dropout is not None:
            drawn = self.nested_dropout(batch, device)
            lengths = drawn if lengths is None else torch.minimum(lengths.to(device), drawn)
        if self.training and self.guidance_dropout > 0:
            dropped = torch.rand(batch, device=device) < self.guidance_dropout
            full = lengths if lengths is not None else torch.full((batch,), self.num_tokens, device=device)
            lengths = torch.where(dropped, torch.zeros_like(full), full)
        condition = self.embed_tokens(latents, lengths)
        where = device if generator is None else "cpu"
        t = sample_times(batch, self.time_distribution, device=where, generator=generator, mean=self.time_mean,
                         std=self.time_std).to(device)
        noise = torch.randn(images.shape, generator=generator, device=where).to(device, images.dtype)
        keep = block_indices(features)
        kept: dict[int, Tensor] = {}

        def predict(noisy: Tensor, times: Tensor) -> Tensor:
            v, blocks = self.velocity(noisy, times, condition, keep)
            kept.update(blocks)
            return v

        loss, estimate = flow_loss(predict, images, noise, t, self.loss_weighting)
        return DecoderLoss(loss, estimate, {f"block{i}": kept[i] for i in keep})

    # ---------------------------------------------------------------------------------------------- sampling
    def forward(self, latents: Tensor, lengths: Tensor | None = None, condition: Tensor | None = None,
                sampling: SamplerSettings | None = None) -> Tensor:
        """Sample ``(B, C, H, W)`` images for ``(B, *layout, in_dim)`` tokens (each image keeping its first
        ``lengths[b]``) with ``sampling`` (default: :attr:`sampling`): one batched call, deterministic for a seed."""
        check_condition(self, condition)
        settings = sampling or self.sampling
        tokens = self.embed_tokens(latents, lengths)
        scale = settings.guidance
        if scale != 1.0:  # conditional and "no tokens" predictions in one batched pass
            empty = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)
            tokens = torch.cat([tokens, self.embed_tokens(latents, empty)])
        batch = latents.shape[0]
        cpu = torch.Generator().manual_seed(settings.seed)
        shape = (batch, self.out_channels, *(g * self.patch_size for g in self.grid))
        noise = torch.randn(shape, generator=cpu).to(latents.device)  # the ODE state stays fp32 under autocast

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            if scale == 1.0:
                return self.velocity(x, t, tokens)[0].to(x.dtype)
            both = self.velocity(torch.cat([x, x]), torch.cat([t, t]), tokens)[0].to(x.dtype)
            return guided(*both.chunk(2), scale)

        return integrate(velocity, noise, settings.steps, settings.solver)
