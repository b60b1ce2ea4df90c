"""Open-MAGVIT2's convolutional encoder and decoder (Luo et al. 2024; TencentARC's ``improved_model.py``).

A VQGAN-like trunk with its own choices: residual blocks without biases and without attention, the middle as
``num_res_blocks`` residual blocks, a 1x1 output conv straight to the LFQ bits, and a decoder that upsamples by
a conv to four times the channels then depth-to-space, and that opens every resolution level with an *adaptive
group norm*: the group-normalised features are scaled and shifted by linear maps of the spatial standard deviation
and mean of the decoder's input (the quantized latents). Parameter names follow the reference (``down.{i}.block``,
``mid_block``, ``adaptive``, ``up.{i}.block``, ``up.{i}.upsample.conv1``), so its checkpoints load by name
(:mod:`vtok.published`); vtok's residual block calls the reference's ``nin_shortcut`` ``skip``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from vtok.modules.conv import ResBlock, norm

from .parts import Decoder, Encoder
from .registry import DECODERS, ENCODERS


@ENCODERS.register("magvit2")
class Magvit2Encoder(Encoder):
    """Images ``(B, C, H, W)`` -> features ``(B, H/f, W/f, out_dim)``, ``f = 2 ** (len(channel_mult) - 1)``.

    Intermediate features: ``level{i}`` (after level ``i``'s residual blocks) and ``mid``.

    Args:
        in_channels: image channels.
        channels: width of the first level; level ``i`` has ``channels * channel_mult[i]``.
        channel_mult: one entry per resolution level.
        num_res_blocks: residual blocks per level, and in the middle.
        out_dim: the latent size (the LFQ bits: 18 for 2^18 codes).
    """

    def __init__(self, in_channels: int = 3, channels: int = 128, channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 4, out_dim: int = 18) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        width = channels
        for level, mult in enumerate(channel_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResBlock(width, channels * mult, bias=False))
                width = channels * mult
            if level < len(channel_mult) - 1:
                stage.downsample = nn.Conv2d(width, width, 3, stride=2, padding=1)
            self.down.append(stage)
        self.mid_block = nn.ModuleList(ResBlock(width, width, bias=False) for _ in range(num_res_blocks))
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, out_dim, 1)
        self.feature_names = (*(f"level{i}" for i in range(len(channel_mult))), "mid")

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, C, H, W)`` -> ``(B, H/f, W/f, out_dim)`` and the named intermediate features (channels last)."""
        self._check_names(names, condition)
        kept: dict[str, Tensor] = {}
        x = self.conv_in(images)
        for level, stage in enumerate(self.down):
            for block in stage.block:
                x = block(x)
            if f"level{level}" in names:
                kept[f"level{level}"] = x.permute(0, 2, 3, 1)
            if hasattr(stage, "downsample"):
                x = stage.downsample(x)
        for block in self.mid_block:
            x = block(x)
        if "mid" in names:
            kept["mid"] = x.permute(0, 2, 3, 1)
        return self.conv_out(F.silu(self.norm_out(x))).permute(0, 2, 3, 1), kept

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return (image_size[0] // self.downsample_factor, image_size[1] // self.downsample_factor)


class AdaptiveGroupNorm(nn.Module):
    """``(B, C, H, W)`` features and ``(B, Z, h, w)`` latents -> ``gamma(std(z)) * GroupNorm(x) + beta(mean(z))``,
    the statistics over the latents' positions (the standard deviation unbiased, plus ``eps`` under the root)."""

    def __init__(self, latent_dim: int, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(norm(channels).num_groups, channels, eps=eps, affine=False)  # 32 at the papers' widths
        self.gamma = nn.Linear(latent_dim, channels)
        self.beta = nn.Linear(latent_dim, channels)
        self.eps = eps

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        flat = latents.flatten(2)
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt())[..., None, None]
        shift = self.beta(flat.mean(dim=-1))[..., None, None]
        return scale * self.gn(x) + shift


class DepthToSpaceUpsample(nn.Module):
    """``(B, C, H, W) -> (B, C, 2H, 2W)``: a 3x3 conv to ``4 C`` channels, then depth-to-space in DCR order (channel
    ``(i * 2 + j) * C + c`` goes to ``c`` at offset ``(i, j)``; torch's ``pixel_shuffle`` is CRD order)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        b, _, h, w = out.shape
        out = out.view(b, 2, 2, -1, h, w).permute(0, 3, 4, 1, 5, 2)
        return out.reshape(b, -1, h * 2, w * 2)


@DECODERS.register("magvit2")
class Magvit2Decoder(Decoder):
    """Latents ``(B, h, w, in_dim)`` -> images ``(B, C, h*f, w*f)``; see the module docstring.

    Args:
        out_channels: image channels.
        channels, channel_mult, num_res_blocks: as the encoder's.
        in_dim: the latent size (the adaptive norms read the latents, so it is also their input size).
    """

    def __init__(self, out_channels: int = 3, channels: int = 128, channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 4, in_dim: int = 18) -> None:
        super().__init__()
        levels = len(channel_mult)
        width = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(in_dim, width, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(width, width, bias=False) for _ in range(num_res_blocks))
        adaptive: list[nn.Module] = []
        up: list[nn.Module] = []
        for level in reversed(range(levels)):
            adaptive.insert(0, AdaptiveGroupNorm(in_dim, width))
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResBlock(width, channels * channel_mult[level], bias=False))
                width = channels * channel_mult[level]
            if level > 0:
                stage.upsample = DepthToSpaceUpsample(width)
            up.insert(0, stage)
        self.adaptive, self.up = nn.ModuleList(adaptive), nn.ModuleList(up)
        self.norm_out = norm(width)
        # The last layer's weight is what the adaptive GAN weight compares gradients on.
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, latents: Tensor, lengths: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """``(B, h, w, in_dim)`` -> ``(B, C, h*f, w*f)``."""
        style = latents.permute(0, 3, 1, 2)
        x = self.conv_in(style)
        for block in self.mid_block:
            x = block(x)
        for level in reversed(range(len(self.up))):
            x = self.adaptive[level](x, style)
            for block in self.up[level].block:
                x = block(x)
            if level > 0:
                x = self.up[level].upsample(x)
        return self.conv_out(F.silu(self.norm_out(x)))

    @property
    def last_layer(self) -> Tensor:
        return self.conv_out.weight


