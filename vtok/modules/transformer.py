"""Transformer blocks shared by the ViT and latent-token families.

Pre-norm blocks with ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where the device has
them), optional 2D rotary positions and an optional attention mask (``(N, N)`` or ``(B, 1, N, N)`` booleans,
``True`` where a query may read a key: causal queries, per-image token counts). Tokens are ``(B, N, width)``.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_STD = 0.02  # weights, learned tokens and position tables alike


def rope_2d(positions: Tensor, head_dim: int, theta: float = 100.0) -> tuple[Tensor, Tensor]:
    """Rotary angles for 2D positions.

    Args:
        positions: ``(N, 2)`` float ``(row, column)`` of each token. Position ``(0, 0)`` is the identity
            rotation, which is what non-spatial tokens (latent tokens, registers) get.
        head_dim: size of one attention head; half its channel pairs rotate with the row, half with the column.
        theta: base of the frequency ladder (small: positions span tens of patches, not thousands of words).

    Returns:
        ``(cos, sin)``, each ``(N, head_dim // 2)``: one angle per channel pair.
    """
    if head_dim % 4:
        raise ValueError(f"2D rotary positions need a head size divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter)
    angles = torch.cat([positions[:, :1] * freqs, positions[:, 1:] * freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x`` ``(B, heads, N, head_dim)`` by ``(N, head_dim // 2)`` angles."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def grid_positions(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``(height * width, 2)`` row-major ``(row, column)`` positions, starting at 1 so none is the identity."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1).float() + 1


class Attention(nn.Module):
    """Multi-head self-attention over ``(B, N, dim)`` with optional rotary angles."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """``depth`` blocks and a final layer norm over ``(B, N, width)`` tokens."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.apply(_init_weights)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None) -> Tensor:
        """``(B, N, width)`` -> ``(B, N, width)``; ``mask``: ``(N, N)`` or ``(B, 1, N, N)``, ``True`` = may attend."""
        return self.forward_blocks(x, rope, mask=mask)[0]

    def forward_blocks(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                       keep: Collection[int] = (), mask: Tensor | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        """Like ``forward``, also returning ``{i: (B, N, width)}``, the tokens after block ``i`` for ``i in keep``."""
        kept = {}
        for index, block in enumerate(self.blocks):
            x = block(x, rope, mask)
            if index in keep:
                kept[index] = x
        return self.norm(x), kept


class LearnedGridPositions(nn.Module):
    """A learned ``(grid, grid, width)`` table, bicubically resized for other grids (e.g. whole images)."""

    def __init__(self, grid: tuple[int, int], width: int) -> None:
        super().__init__()
        self.grid = grid
        self.table = nn.Parameter(torch.randn(1, width, *grid) * INIT_STD)

    def forward(self, height: int, width: int) -> Tensor:
        """``(height * width, width)`` position embeddings."""
        table = self.table
        if (height, width) != self.grid:
            table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return table.flatten(2)[0].transpose(0, 1)


def _init_weights(module: nn.Module) -> None:
    # Xavier (as MAE and CLIP do): with 0.02-std attention weights the logits start near zero and attention
    # learns to select tokens very slowly, which stalls latent-token models whose information must be routed.
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def causal_query_mask(context: int, queries: int, device: torch.device | None = None) -> Tensor:
    """``(N, N)`` attention mask, ``N = context + queries``, for ``context`` tokens followed by ``queries``: the
    context reads only itself; query ``i`` reads the context and queries ``0..i`` (a causal Q-Former in one
    transformer). Query ``i``'s output then depends on the context and on earlier queries alone."""
    n = context + queries
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:context, :context] = True
    mask[context:, :context] = True
    mask[context:, context:] = torch.ones(queries, queries, dtype=torch.bool, device=device).tril()
    return mask


def patch_grid(image_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
    """``(H / p, W / p)`` for an image size, checking divisibility."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if size[0] % patch_size or size[1] % patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch_size}")
    return size[0] // patch_size, size[1] // patch_size


def init_token(shape: tuple[int, ...]) -> nn.Parameter:
    """A learned token (mask, latent, register, position), initialised like the weights around it."""
    return nn.Parameter(torch.randn(*shape) * INIT_STD)


def block_indices(names: Collection[str]) -> set[int]:
    """Feature names ``{"block3", ...}`` (a transformer encoder's ``feature_names``) -> block indices ``{3, ...}``."""
    return {int(name.removeprefix("block")) for name in names}
