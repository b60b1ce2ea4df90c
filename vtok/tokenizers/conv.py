"""Convolutional encoder and decoder on a 2D grid (VQGAN / LDM style).

The encoder turns ``(B, C, H, W)`` images into a channels-last grid of features ``(B, H/f, W/f, D)`` with
``f = patch_size * 2 ** (len(channel_mult) - 1)``; the decoder inverts it. A ``patch_size`` above 1 starts
with a space-to-depth step (and the decoder ends with pixel shuffle), which moves the work of the first level to
a lower resolution: on CPUs and small budgets this buys far more steps per second for little quality.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.modules.conv import AttnBlock, Downsample, ResBlock, Upsample, norm

from .parts import Decoder, Encoder
from .registry import DECODERS, ENCODERS


@ENCODERS.register("conv")
class ConvEncoder(Encoder):
    """Images ``(B, C, H, W)`` -> features ``(B, H/f, W/f, out_dim)``.

    Intermediate features: ``level{i}`` (``(B, H/(p 2^i), W/(p 2^i), width_i)``, the output of resolution level
    ``i`` before it is downsampled) and ``mid`` (the lowest resolution, before the output projection).

    With ``attn_resolutions``, ``downsample_padding="bottom_right"`` and ``z_channels`` (and defaults elsewhere)
    this is exactly the encoder of taming's VQGAN, LDM / Stable Diffusion and diffusers' ``VQModel`` /
    ``AutoencoderKL``: ``reference_names`` maps each of its layers to the name it has there, which is how
    published weights are imported and exported (:mod:`vtok.published`).

    Args:
        in_channels: image channels.
        channels: width of the first level; level ``i`` has ``channels * channel_mult[i]``.
        channel_mult: one entry per resolution level; each level but the last halves the resolution.
        num_res_blocks: residual blocks per level.
        attention: self-attention in the middle block, at the lowest resolution (costly for large grids).
        out_dim: feature size handed to the bottleneck.
        patch_size: space-to-depth factor applied before the first convolution.
        downsample: the total factor ``f`` instead of ``patch_size``: the space-to-depth factor becomes
            ``f / 2 ** (len(channel_mult) - 1)`` (a conv grid that must match another encoder's patch grid).
        lowpass_skip: add a linear path from the ``f x f`` patch means to the features. With the decoder's
            matching path the tokenizer starts out close to a patch-mean codec and the convolutions learn
            the detail as a residual, which converges far faster on small budgets.
        attn_resolutions: feature-map sizes (at ``resolution``) whose levels get an attention block after every
            residual block, as the references' ``attn_resolutions`` (VQGAN f16: ``[16]``).
        resolution: the image size ``attn_resolutions`` refers to (level ``i`` is ``resolution / (p 2^i)``); the
            network itself takes any size.
        downsample_padding: ``same`` or ``bottom_right`` (the references'), see :class:`~vtok.modules.conv.Downsample`.
        z_channels: the references' latent width: the last conv maps to ``z_channels`` (twice that with
            ``double_z``) and a 1x1 ``quant_conv`` to ``out_dim``; ``None`` maps straight to ``out_dim``.
        double_z: the last conv gives mean and log-variance (a Gaussian bottleneck), ``2 * z_channels``.
        norm_groups: GroupNorm groups (at most; the references use 32).
        mid_blocks: residual blocks in the middle (1 or 2; default 2 with attention between them, 1 without;
            the references always have 2).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention: bool = True,
        out_dim: int = 256,
        patch_size: int = 1,
        lowpass_skip: bool = False,
        downsample: int | None = None,
        attn_resolutions: Sequence[int] = (),
        resolution: int = 256,
        downsample_padding: str = "same",
        z_channels: int | None = None,
        double_z: bool = False,
        norm_groups: int = 32,
        mid_blocks: int | None = None,
    ) -> None:
        super().__init__()
        if double_z and z_channels is None:
            raise ValueError("double_z needs z_channels (the conv then gives 2 * z_channels, quant_conv out_dim)")
        patch_size = space_to_depth(patch_size, downsample, channel_mult)
        self.out_dim = out_dim
        self.downsample_factor = patch_size * 2 ** (len(channel_mult) - 1)
        widths = [channels * m for m in channel_mult]
        stack = _Stack()
        stack.add(nn.PixelUnshuffle(patch_size))
        stack.add(nn.Conv2d(in_channels * patch_size**2, widths[0], 3, padding=1), "conv_in")
        width = widths[0]
        for level, level_width in enumerate(widths):
            attend = resolution // (patch_size * 2**level) in attn_resolutions
            for j in range(num_res_blocks):
                stack.add(ResBlock(width, level_width, norm_groups), f"down.{level}.block.{j}")
                width = level_width
                if attend:
                    stack.add(AttnBlock(width, norm_groups), f"down.{level}.attn.{j}")
            stack.tap(f"level{level}")
            if level < len(widths) - 1:
                stack.add(Downsample(width, downsample_padding), f"down.{level}.downsample")
        _middle(stack, width, attention, mid_blocks, norm_groups)
        stack.tap("mid")
        stack.add(norm(width, norm_groups), "norm_out")
        stack.add(nn.SiLU())
        z_out = out_dim if z_channels is None else z_channels * (2 if double_z else 1)
        stack.add(nn.Conv2d(width, z_out, 3, padding=1), "conv_out")
        self.layers = nn.Sequential(*stack.layers)
        self.quant_conv = nn.Conv2d(z_out, out_dim, 1) if z_channels is not None else None
        self._taps = stack.taps
        self.feature_names = tuple(stack.taps.values())
        self.reference_names = {**stack.names, **({"quant_conv": "quant_conv"} if self.quant_conv else {})}
        self.skip = nn.Conv2d(in_channels, out_dim, 1) if lowpass_skip else None

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, C, H, W)`` -> ``(B, H/f, W/f, out_dim)`` and the named intermediate features (channels last)."""
        self._check_names(names, condition)
        kept: dict[str, Tensor] = {}
        features = images
        for index, layer in enumerate(self.layers):
            features = layer(features)
            if self._taps.get(index) in names:
                kept[self._taps[index]] = features.permute(0, 2, 3, 1)
        if self.quant_conv is not None:
            features = self.quant_conv(features)
        if self.skip is not None:
            features = features + self.skip(F.avg_pool2d(images, self.downsample_factor))
        return features.permute(0, 2, 3, 1), kept

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an image of ``(H, W)`` pixels."""
        f = self.downsample_factor
        return (image_size[0] // f, image_size[1] // f)


@DECODERS.register("conv")
class ConvDecoder(Decoder):
    """Features ``(B, h, w, in_dim)`` -> images ``(B, C, h*f, w*f)``; mirrors :class:`ConvEncoder`.

    ``lowpass_skip`` adds a 1x1 projection of the features upsampled bicubically to the output; ``downsample``
    sets the total factor as in the encoder. ``attn_resolutions`` / ``resolution`` put an attention block after
    every residual block of those levels; ``z_channels`` adds the references' 1x1 ``post_quant_conv`` from
    ``in_dim`` to ``z_channels`` before the first conv; ``norm_groups`` and ``mid_blocks`` as in the encoder.
    """

    def __init__(
        self,
        out_channels: int = 3,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention: bool = True,
        in_dim: int = 256,
        patch_size: int = 1,
        lowpass_skip: bool = False,
        downsample: int | None = None,
        attn_resolutions: Sequence[int] = (),
        resolution: int = 256,
        z_channels: int | None = None,
        norm_groups: int = 32,
        mid_blocks: int | None = None,
    ) -> None:
        super().__init__()
        patch_size = space_to_depth(patch_size, downsample, channel_mult)
        self.upsample_factor = patch_size * 2 ** (len(channel_mult) - 1)
        widths = [channels * m for m in channel_mult]
        width = widths[-1]
        self.post_quant_conv = nn.Conv2d(in_dim, z_channels, 1) if z_channels is not None else None
        stack = _Stack()
        stack.add(nn.Conv2d(z_channels or in_dim, width, 3, padding=1), "conv_in")
        _middle(stack, width, attention, mid_blocks, norm_groups)
        for level in reversed(range(len(widths))):
            attend = resolution // (patch_size * 2**level) in attn_resolutions
            for j in range(num_res_blocks + 1):
                stack.add(ResBlock(width, widths[level], norm_groups), f"up.{level}.block.{j}")
                width = widths[level]
                if attend:
                    stack.add(AttnBlock(width, norm_groups), f"up.{level}.attn.{j}")
            if level > 0:
                stack.add(Upsample(width), f"up.{level}.upsample")
        self.layers = nn.Sequential(*stack.layers)
        self.norm_out = norm(width, norm_groups)
        # The last layer's weight is what the adaptive GAN weight compares gradients on.
        self.conv_out = nn.Conv2d(width, out_channels * patch_size**2, 3, padding=1)
        self.to_pixels = nn.PixelShuffle(patch_size)
        self.skip = nn.Conv2d(in_dim, out_channels, 1) if lowpass_skip else None
        self.reference_names = {**stack.names, "norm_out": "norm_out", "conv_out": "conv_out",
                                **({"post_quant_conv": "post_quant_conv"} if self.post_quant_conv else {})}

    def forward(self, latents: Tensor, lengths: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """``(B, h, w, in_dim)`` -> ``(B, C, h*f, w*f)`` (a grid has no lengths)."""
        # Contiguous NCHW: a permuted view is channels-last to oneDNN, whose channels-last kernels (convolution
        # backward, group norm) made a whole VQ step 1.2x slower on an AVX2 CPU and within noise on AVX-512
        # (bench/RESULTS.md, "an AVX2-only CPU").
        features = latents.permute(0, 3, 1, 2).contiguous()
        hidden = self.post_quant_conv(features) if self.post_quant_conv is not None else features
        images = self.to_pixels(self.conv_out(F.silu(self.norm_out(self.layers(hidden)))))
        if self.skip is not None:
            images = images + bicubic_upsample(self.skip(features), self.upsample_factor)
        return images

    @property
    def last_layer(self) -> Tensor:
        return self.conv_out.weight


def _middle(stack: _Stack, width: int, attention: bool, mid_blocks: int | None, groups: int) -> None:
    """The middle block: ``block_1``, ``attn_1`` (with ``attention``), ``block_2`` (when ``mid_blocks`` is 2)."""
    blocks = mid_blocks if mid_blocks is not None else (2 if attention else 1)
    if blocks not in (1, 2):
        raise ValueError(f"mid_blocks={mid_blocks}: the middle holds 1 or 2 residual blocks")
    stack.add(ResBlock(width, width, groups), "mid.block_1")
    if attention:
        stack.add(AttnBlock(width, groups), "mid.attn_1")
    if blocks == 2:
        stack.add(ResBlock(width, width, groups), "mid.block_2")


class _Stack:
    """Layers in order, with the reference name of each (``layers.N`` -> ``down.0.block.1``) and the named taps
    (index of the layer after which a feature is read)."""

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.names: dict[str, str] = {}
        self.taps: dict[int, str] = {}

    def add(self, layer: nn.Module, reference_name: str | None = None) -> None:
        if reference_name is not None:
            self.names[f"layers.{len(self.layers)}"] = reference_name
        self.layers.append(layer)

    def tap(self, feature: str) -> None:
        self.taps[len(self.layers) - 1] = feature


def bicubic_upsample(images: Tensor, factor: int) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, C, h*factor, w*factor)``: ``F.interpolate(mode="bicubic", align_corners=False)``
    written as its two 1-D operators, ``A_h @ images @ A_w^T``. The same linear map (to float rounding), but two
    small matrix products instead of a 16-tap stencil per output pixel: 0.1 ms instead of 6.5 ms (forward and
    backward) in the quick start's decoder."""
    rows = _bicubic_matrix(images.shape[-2], factor).to(images)
    cols = rows if images.shape[-1] == images.shape[-2] else _bicubic_matrix(images.shape[-1], factor).to(images)
    return rows @ images @ cols.T


@functools.lru_cache(maxsize=16)
def _bicubic_matrix(size: int, factor: int) -> Tensor:
    """``(size*factor, size)`` float64: column ``j`` is the bicubic upsampling of the ``j``-th unit vector."""
    units = torch.eye(size, dtype=torch.float64)[:, None, :, None]  # size images of size x 1 pixels
    up = F.interpolate(units, size=(size * factor, 1), mode="bicubic", align_corners=False)
    return up[:, 0, :, 0].T.contiguous()


def space_to_depth(patch_size: int, downsample: int | None, channel_mult: Sequence[int]) -> int:
    """The space-to-depth factor: ``patch_size``, or the one that makes the total factor ``downsample``."""
    if downsample is None:
        return patch_size
    levels = 2 ** (len(channel_mult) - 1)
    if downsample % levels:
        raise ValueError(f"downsample={downsample} is not a multiple of the {levels}x the {len(channel_mult)} "
                         "levels of channel_mult give")
    return downsample // levels
