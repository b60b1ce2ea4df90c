"""Object-centric tokens (Slot-MLLM): a ViT reads the image, then ``K`` slots share out its patches by slot
attention; the slots are the tokens, a set (their order carries no meaning: decode them with a decoder that
gives tokens no positions, ``decoder.kind=flow`` with ``token_positions: false``)."""

from __future__ import annotations

from collections.abc import Collection

from torch import Tensor, nn

from vtok.modules.patches import PatchPositions
from vtok.modules.slot_attention import SlotAttention
from vtok.modules.transformer import Transformer, block_indices, init_token, patch_grid

from .parts import Encoder
from .registry import ENCODERS


@ENCODERS.register("slots")
class SlotEncoder(Encoder):
    """Images ``(B, C, H, W)`` -> slots ``(B, num_slots, out_dim)``.

    Intermediate features: ``block{i}``, the patch tokens ``(B, H/p, W/p, width)`` after transformer block ``i``.

    Args:
        num_slots: ``K``, slots (tokens) per image.
        in_channels, patch_size, width, depth, heads, mlp_ratio, position, image_size: the ViT over the patches.
        slot_dim: the slots' size inside slot attention.
        iterations: rounds of slot attention.
        out_dim: feature size handed to the bottleneck.
    """

    def __init__(self, num_slots: int = 32, in_channels: int = 3, patch_size: int = 16, width: int = 512,
                 depth: int = 6, heads: int = 8, mlp_ratio: float = 4.0, position: str = "learned",
                 image_size: int = 256, slot_dim: int = 256, iterations: int = 3, out_dim: int = 32) -> None:
        super().__init__()
        self.num_slots, self.patch_size, self.out_dim = num_slots, patch_size, out_dim
        self.to_tokens = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.positions = PatchPositions(position, patch_grid(image_size, patch_size), width, width // heads)
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        # one learned start per slot: distinct starts keep the slots apart without sampling noise, so encoding is
        # deterministic; they are the order-free part's only order
        self.slots = init_token((num_slots, slot_dim))
        self.slot_attention = SlotAttention(slot_dim, width, iterations)
        self.to_features = nn.Linear(slot_dim, out_dim)
        self.feature_names = tuple(f"block{i}" for i in range(depth))

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, C, H, W)`` -> ``(B, K, out_dim)`` slots and the named blocks' patches."""
        self._check_names(names, condition)
        grid = patch_grid(tuple(images.shape[-2:]), self.patch_size)
        patches = self.to_tokens(images).flatten(2).transpose(1, 2)
        patches, rope = self.positions(patches, grid)
        patches, kept = self.transformer.forward_blocks(patches, rope, keep=block_indices(names))
        start = self.slots.to(patches.dtype).expand(len(images), -1, -1)
        slots = self.slot_attention(patches, start)
        return self.to_features(slots), {f"block{i}": h.unflatten(1, grid) for i, h in kept.items()}

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int]:
        """Token layout ``(K,)``: the same for every image size."""
        return (self.num_slots,)
