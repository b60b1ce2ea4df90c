"""TiTok's 1D tokenizer network (Yu et al. 2024, "An Image is Worth 32 Tokens"; bytedance/1d-tokenizer
``modeling/titok.py`` and ``modeling/modules/blocks.py``), with its parameter names so its checkpoints load by name.

Encoder: patches and a class token with learned positions, then the learned latent tokens with their own
positions, ``ln_pre``, pre-norm transformer blocks (``nn.MultiheadAttention``, GELU MLP), ``ln_post`` on the
latent tokens and a 1x1 conv to the token size. Its published ("legacy") checkpoints hand that conv the latent
tokens' ``(N, width)`` memory read as ``(width, N)``; ``legacy=True`` keeps that, or the weights would not fit.

Decoder: the tokens embedded, mask tokens (with a class token) at the patch positions, the same transformer, then
either the two-stage recipe's head (``pixel_decoder="maskgit_vqgan"``: logits over MaskGIT-VQGAN's 1,024 codes, a
softmax-weighted mix of its codebook, decoded by MaskGIT-VQGAN's pixel decoder) or RGB patches directly
(``"rgb"``). TiTok reads and writes images in ``[0, 1]``; these parts convert from and to vtok's ``[-1, 1]``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.modules.conv import norm

from .parts import Decoder, Encoder
from .registry import DECODERS, ENCODERS

PIXEL_DECODERS = ("maskgit_vqgan", "rgb")


class TitokBlock(nn.Module):
    """Pre-norm transformer block (open_clip's ``ResidualAttentionBlock``): ``(B, L, D) -> (B, L, D)``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Trunk(nn.Module):
    """What TiTok's encoder and decoder share: class token, patch positions, latent-token positions, the blocks."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int, num_tokens: int
                 ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
        self.grid = image_size // patch_size
        self.image_size, self.num_tokens, self.width = image_size, num_tokens, width
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid**2 + 1, width))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(TitokBlock(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)

    def run(self, x: Tensor) -> Tensor:
        x = self.ln_pre(x)
        for block in self.transformer:
            x = block(x)
        return x


@ENCODERS.register("titok")
class TitokEncoder(_Trunk, Encoder):
    """Images ``(B, 3, image_size, image_size)`` in ``[-1, 1]`` -> ``(B, num_tokens, out_dim)``.

    Args:
        image_size, patch_size: the one image size and the patch side (TiTok: 256, 16).
        width, depth, heads: the ViT (S: 512, 8, 8; B: 768, 12, 12; L: 1024, 24, 16).
        num_tokens: latent tokens (32, 64, 128, ...).
        out_dim: the token size (TiTok: 12; twice that for its VAE variant).
        legacy: the published checkpoints' read of the latent tokens before the output conv (see the module).
    """

    def __init__(self, image_size: int = 256, patch_size: int = 16, width: int = 512, depth: int = 8,
                 heads: int = 8, num_tokens: int = 128, out_dim: int = 12, legacy: bool = True) -> None:
        super().__init__(image_size, patch_size, width, depth, heads, num_tokens)
        self.out_dim, self.legacy = out_dim, legacy
        self.latent_tokens = nn.Parameter(width**-0.5 * torch.randn(num_tokens, width))
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.conv_out = nn.Conv2d(width, out_dim, 1)
        self.feature_names = ()

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, num_tokens, out_dim)``."""
        self._check_names(names, condition)
        b = images.shape[0]
        patches = self.patch_embed((images + 1) / 2).flatten(2).transpose(1, 2)  # TiTok reads [0, 1]
        x = torch.cat([self.class_embedding.expand(b, 1, -1), patches], 1) + self.positional_embedding
        latents = (self.latent_tokens + self.latent_token_positional_embedding).expand(b, -1, -1)
        x = self.run(torch.cat([x, latents], 1))
        tokens = self.ln_post(x[:, 1 + self.grid**2:])
        grid = tokens.reshape(b, self.width, self.num_tokens) if self.legacy else tokens.transpose(1, 2)
        return self.conv_out(grid[..., None])[..., 0].transpose(1, 2), {}

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int]:
        return (self.num_tokens,)


@DECODERS.register("titok")
class TitokDecoder(_Trunk, Decoder):
    """Latents ``(B, num_tokens, in_dim)`` -> images ``(B, 3, image_size, image_size)`` in ``[-1, 1]``.

    Args:
        image_size, patch_size, width, depth, heads, num_tokens: as the encoder's.
        in_dim: the token size.
        pixel_decoder: ``maskgit_vqgan`` (the published two-stage decoder) or ``rgb`` (patches directly).
        vqgan_channels, vqgan_channel_mult, vqgan_res_blocks, vqgan_codes, vqgan_dim: MaskGIT-VQGAN's decoder
            and codebook (TiTok: 128, [1, 1, 2, 2, 4], 2, 1,024 codes of 256).
    """

    fixed_size: int | None = None

    def __init__(self, image_size: int = 256, patch_size: int = 16, width: int = 512, depth: int = 8,
                 heads: int = 8, num_tokens: int = 128, in_dim: int = 12, pixel_decoder: str = "maskgit_vqgan",
                 vqgan_channels: int = 128, vqgan_channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
                 vqgan_res_blocks: int = 2, vqgan_codes: int = 1024, vqgan_dim: int = 256) -> None:
        super().__init__(image_size, patch_size, width, depth, heads, num_tokens)
        if pixel_decoder not in PIXEL_DECODERS:
            raise ValueError(f"pixel_decoder={pixel_decoder!r}: use one of {list(PIXEL_DECODERS)}")
        self.fixed_size = image_size
        self.decoder_embed = nn.Linear(in_dim, width)
        self.mask_token = nn.Parameter(width**-0.5 * torch.randn(1, 1, width))
        self.pixel_decoder_kind = pixel_decoder
        if pixel_decoder == "maskgit_vqgan":
            if 2 ** (len(vqgan_channel_mult) - 1) != patch_size:
                raise ValueError(f"the pixel decoder upsamples {2 ** (len(vqgan_channel_mult) - 1)}x "
                                 f"({len(vqgan_channel_mult)} levels) but a patch is {patch_size} pixels")
            self.ffn = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.Tanh(), nn.Conv2d(2 * width, vqgan_codes, 1))
            self.pixel_quantize = nn.Module()
            self.pixel_quantize.embedding = nn.Embedding(vqgan_codes, vqgan_dim)
            self.pixel_decoder = MaskgitVqganDecoder(vqgan_channels, vqgan_channel_mult, vqgan_res_blocks, vqgan_dim)
        else:
            self.ffn = nn.Sequential(nn.Conv2d(width, patch_size**2 * 3, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, latents: Tensor, lengths: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """``(B, N, in_dim)`` -> ``(B, 3, image_size, image_size)`` (TiTok decodes its whole sequence)."""
        b, n, _ = latents.shape
        x = self.decoder_embed(latents) + self.latent_token_positional_embedding[:n]
        masks = torch.cat([self.class_embedding.expand(b, 1, -1), self.mask_token.expand(b, self.grid**2, -1)], 1)
        x = self.run(torch.cat([masks + self.positional_embedding, x], 1))
        x = self.ln_post(x[:, 1: 1 + self.grid**2]).transpose(1, 2).reshape(b, self.width, self.grid, self.grid)
        if self.pixel_decoder_kind == "maskgit_vqgan":
            mixed = torch.einsum("nchw,cd->ndhw", self.ffn(x).softmax(1), self.pixel_quantize.embedding.weight)
            images = self.pixel_decoder(mixed)
        else:  # channels are (row in patch, column in patch, colour): not pixel_shuffle's (colour, row, column)
            p = self.image_size // self.grid
            patches = self.ffn(x).view(b, p, p, 3, self.grid, self.grid).permute(0, 3, 4, 1, 5, 2)
            images = self.conv_out(patches.reshape(b, 3, self.image_size, self.image_size))
        return images * 2 - 1  # TiTok writes [0, 1]

    @property
    def last_layer(self) -> Tensor:
        return self.pixel_decoder.conv_out.weight if self.pixel_decoder_kind == "maskgit_vqgan" else \
            self.conv_out.weight


class MaskgitResBlock(nn.Module):
    """MaskGIT-VQGAN's residual block: bias-free 3x3 convs; where the width changes, its 1x1 shortcut is applied
    to the block's *output* (as the reference does), not to its input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = norm(in_channels)  # 32 groups at the reference widths
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels \
            else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (self.nin_shortcut(h) if self.nin_shortcut is not None else x)


class MaskgitVqganDecoder(nn.Module):
    """MaskGIT-VQGAN's pixel decoder: ``(B, dim, h, w) -> (B, 3, h * 2^(L-1), w * 2^(L-1))`` in about ``[0, 1]``."""

    def __init__(self, channels: int, channel_mult: tuple[int, ...], res_blocks: int, dim: int) -> None:
        super().__init__()
        levels = len(channel_mult)
        width = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(dim, width, 3, padding=1)
        self.mid = nn.ModuleList(MaskgitResBlock(width, width) for _ in range(res_blocks))
        self.up = nn.ModuleList()
        for level in range(levels):  # up[i] is level i; they run from the last
            stage = nn.Module()
            block_in = channels * channel_mult[min(level + 1, levels - 1)]
            block_out = channels * channel_mult[level]
            stage.block = nn.ModuleList(MaskgitResBlock(block_in if j == 0 else block_out, block_out)
                                        for j in range(res_blocks))
            if level != 0:
                stage.upsample_conv = nn.Conv2d(block_out, block_out, 3, padding=1)
            self.up.append(stage)
        self.norm_out = norm(channels * channel_mult[0])
        self.conv_out = nn.Conv2d(channels * channel_mult[0], 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.mid:
            x = block(x)
        for stage in reversed(self.up):
            for block in stage.block:
                x = block(x)
            if hasattr(stage, "upsample_conv"):
                x = stage.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(x)))
