"""Convolutional blocks of the VQGAN / LDM family: residual blocks, single-head attention, resampling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def norm(channels: int, groups: int = 32) -> nn.Module:
    """GroupNorm with as many groups as divide ``channels`` (at most ``groups``)."""
    groups = min(groups, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """``(B, C_in, H, W) -> (B, C_out, H, W)``: two norm-SiLU-conv layers plus a (projected) skip.

    ``groups``: GroupNorm groups (at most; fewer when they do not divide the channels); ``bias``: the convolutions
    have biases (Open-MAGVIT2's have none).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, bias: bool = True) -> None:
        super().__init__()
        self.norm1 = norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.norm2 = norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=bias) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """``(B, C, H, W) -> (B, C, H, W)``: single-head self-attention over all positions, residual (the VQGAN / LDM
    block: query, key and value are 1x1 convolutions, here one conv of ``3 C`` outputs, scaled by ``C^-1/2``)."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


DOWNSAMPLE_PADDINGS = ("same", "bottom_right")


class Downsample(nn.Module):
    """``(B, C, H, W) -> (B, C, H/2, W/2)`` with a strided 3x3 convolution.

    ``padding``: ``same`` pads one pixel on every side (output pixel ``i`` is centred on input pixel ``2i``);
    ``bottom_right`` pads only the bottom and right edge, as taming's VQGAN, LDM / Stable Diffusion and diffusers
    do (centred on ``2i + 1``: the grid is shifted by one input pixel, so weights trained one way give other
    outputs the other way).
    """

    def __init__(self, channels: int, padding: str = "same") -> None:
        super().__init__()
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"downsample padding {padding!r}: use one of {list(DOWNSAMPLE_PADDINGS)}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1 if padding == "same" else 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "bottom_right":
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """``(B, C, H, W) -> (B, C, 2H, 2W)``: nearest-neighbour upsampling then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
