"""Dynamic-length tokens (LaVIT): a selector keeps a subset of the patches, a merger folds the dropped patches into
the kept ones, and each image gets its own token count.

The kept tokens come first (in raster order), padded to the patch count; ``EncoderOutput.lengths`` says how many
each image keeps, and a decoder that takes lengths (``decoder.kind=latent_tokens``) reads only those.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn

from vtok.modules.patches import PatchPositions
from vtok.modules.transformer import Transformer, block_indices, patch_grid

from .parts import Encoder, EncoderOutput
from .registry import ENCODERS


@ENCODERS.register("dynamic_tokens")
class DynamicTokenEncoder(Encoder):
    """Images ``(B, C, H, W)`` -> kept tokens first, ``(B, N, out_dim)`` with ``N`` the patch count, and lengths.

    Training draws a hard keep mask from the selector's probabilities (Gumbel-sigmoid, straight through: the kept
    tokens are multiplied by the mask, so the reconstruction reaches the selector) and pulls the mean keep
    probability of each image towards ``keep_ratio``. Inference keeps, per image, the ``round(sum(p))`` patches
    of highest probability: as many as the selector expects (LaVIT thresholds the probability; ``threshold``
    does that instead).

    Intermediate features: ``block{i}``, the patch tokens ``(B, H/p, W/p, width)`` after ViT block ``i``.

    Args:
        in_channels, patch_size, width, depth, heads, mlp_ratio, position, image_size: the ViT over the patches.
        merger_depth: blocks of the merger, in which each kept token reads every patch and a dropped one itself.
        keep_ratio: the target share of patches kept.
        ratio_weight: weight of ``(mean keep probability - keep_ratio)^2``.
        threshold: keep the patches whose probability passes it at inference (``None``: the expected count).
        temperature: of the Gumbel-sigmoid in training.
        min_tokens: every image keeps at least this many.
        out_dim: feature size handed to the bottleneck.
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 16, width: int = 512, depth: int = 8, heads: int = 8,
                 mlp_ratio: float = 4.0, position: str = "learned", image_size: int = 256, merger_depth: int = 2,
                 keep_ratio: float = 0.5, ratio_weight: float = 1.0, threshold: float | None = None,
                 temperature: float = 1.0, min_tokens: int = 1, out_dim: int = 12) -> None:
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio={keep_ratio}: a share in (0, 1]")
        self.patch_size, self.out_dim, self.image_size = patch_size, out_dim, image_size
        self.keep_ratio, self.ratio_weight, self.threshold = keep_ratio, ratio_weight, threshold
        self.temperature, self.min_tokens = temperature, min_tokens
        self.to_tokens = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.positions = PatchPositions(position, patch_grid(image_size, patch_size), width, width // heads)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.selector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width // 2), nn.GELU(),
                                      nn.Linear(width // 2, 1))
        self.merger = Transformer(width, merger_depth, heads, mlp_ratio)
        self.to_features = nn.Linear(width, out_dim)
        self.feature_names = tuple(f"block{i}" for i in range(depth))

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int]:
        """Token layout ``(N,)``: the most an image can keep, its patch count."""
        grid = patch_grid(image_size, self.patch_size)
        return (grid[0] * grid[1],)

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.forward_tokens(images, names, condition)
        return out.features, out.named

    def keep_mask(self, logits: Tensor) -> Tensor:
        """``(B, N)`` selector logits -> ``(B, N)`` keep mask, 0 or 1 (straight-through in training)."""
        if self.training:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logits + u.log() - (-u).log1p()) / self.temperature)
            hard = (soft > 0.5).to(soft.dtype)
            keep = hard + soft - soft.detach()
        elif self.threshold is not None:
            keep = (torch.sigmoid(logits) > self.threshold).to(logits.dtype)
        else:
            p = torch.sigmoid(logits)
            count = p.sum(1).round().long().clamp(min=1)
            rank = p.argsort(1, descending=True).argsort(1)
            keep = (rank < count[:, None]).to(logits.dtype)
        floor = logits.argsort(1, descending=True).argsort(1) < self.min_tokens  # every image keeps a few
        return torch.where(floor & (keep < 0.5), torch.ones_like(keep), keep)

    def forward_tokens(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                       ) -> EncoderOutput:
        """``(B, C, H, W)`` -> kept tokens first ``(B, N, out_dim)``, ``lengths`` ``(B,)``, the keep-ratio loss."""
        self._check_names(names, condition)
        grid = patch_grid(tuple(images.shape[-2:]), self.patch_size)
        patches = self.to_tokens(images).flatten(2).transpose(1, 2)
        patches, rope = self.positions(patches, grid)
        x, kept = self.transformer.forward_blocks(patches, rope, keep=block_indices(names))
        logits = self.selector(x)[..., 0].float()
        keep = self.keep_mask(logits)
        kept_bool = keep > 0.5
        count = x.shape[1]
        eye = torch.eye(count, dtype=torch.bool, device=x.device)
        mask = (kept_bool[:, :, None] | eye)[:, None]  # B, 1, N, N: kept tokens read all, dropped ones themselves
        merged = self.merger(x, rope, mask=mask) * keep[..., None].to(x.dtype)
        order = torch.sort((~kept_bool).float(), dim=1, stable=True).indices  # kept first, in raster order
        packed = merged.gather(1, order[..., None].expand(-1, -1, merged.shape[-1]))
        lengths = kept_bool.sum(1)
        padding = torch.arange(count, device=x.device)[None] >= lengths[:, None]
        features = self.to_features(packed).masked_fill(padding[..., None], 0.0)
        probability = torch.sigmoid(logits).mean(1)
        losses = {"keep_ratio": self.ratio_weight * ((probability - self.keep_ratio) ** 2).mean()} \
            if self.training else {}
        stats = {"kept_fraction": kept_bool.float().mean().detach(), "keep_probability": probability.mean().detach()}
        return EncoderOutput(features, {f"block{i}": h.unflatten(1, grid) for i, h in kept.items()}, lengths,
                             losses, stats)
