"""Two encoders side by side (TokenFlow): a semantic one and a pixel one over the same token grid.

Their features are concatenated, semantic channels first, for a dual-codebook bottleneck
(:class:`~vtok.quantizers.DualCodebookQuantizer` with ``semantic_dim`` equal to the semantic encoder's
``out_dim``). The semantic encoder is a vtok encoder distilled to a teacher during training, so the exported
tokenizer still loads with vtok alone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor

from .parts import Encoder
from .registry import ENCODERS


@ENCODERS.register("dual")
class DualEncoder(Encoder):
    """Images ``(B, C, H, W)`` -> ``(B, h, w, semantic.out_dim + pixel.out_dim)``.

    Args:
        semantic: ``{"kind": ..., **kwargs}`` of the semantic encoder (any registered kind).
        pixel: ``{"kind": ..., **kwargs}`` of the pixel encoder; its grid must equal the semantic one's.

    Intermediate features: ``semantic`` and ``pixel`` (each encoder's output) and ``semantic.NAME`` /
    ``pixel.NAME`` for each encoder's own named features.
    """

    def __init__(self, semantic: dict[str, Any], pixel: dict[str, Any]) -> None:
        super().__init__()
        self.semantic = ENCODERS.build(semantic)
        self.pixel = ENCODERS.build(pixel)
        self.semantic_dim = self.semantic.out_dim
        self.out_dim = self.semantic.out_dim + self.pixel.out_dim
        self.feature_names = ("semantic", "pixel", *(f"semantic.{n}" for n in self.semantic.feature_names),
                              *(f"pixel.{n}" for n in self.pixel.feature_names))

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, ...]:
        grid = self.pixel.grid_shape(image_size)
        if self.semantic.grid_shape(image_size) != grid:
            raise ValueError(f"semantic grid {self.semantic.grid_shape(image_size)} differs from the pixel grid "
                             f"{grid} at {image_size}: give both encoders the same downsampling")
        return grid

    def forward_features(self, images: Tensor, names: Collection[str] = (), condition: Tensor | None = None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(B, C, H, W)`` -> ``(B, h, w, out_dim)`` (semantic channels first) and the named features."""
        self._check_names(names, condition)
        outputs, kept = {}, {}
        for branch in ("semantic", "pixel"):
            wanted = {n.split(".", 1)[1] for n in names if n.startswith(f"{branch}.")}
            outputs[branch], inner = getattr(self, branch).forward_features(images, wanted)
            kept.update({f"{branch}.{n}": v for n, v in inner.items()})
            if branch in names:
                kept[branch] = outputs[branch]
        if outputs["semantic"].shape[:-1] != outputs["pixel"].shape[:-1]:
            raise ValueError(f"semantic features {tuple(outputs['semantic'].shape)} and pixel features "
                             f"{tuple(outputs['pixel'].shape)} are on different grids")
        return torch.cat([outputs["semantic"], outputs["pixel"]], -1), kept
