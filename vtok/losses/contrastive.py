"""Image-text contrastive loss (InfoNCE, as in CLIP / VILA-U / UniTok) between tokenizer features and captions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.distributed import gather_with_grad, is_distributed, rank

from .term import LossTerm, TermInputs


class ImageTextContrastive(LossTerm):
    """Symmetric InfoNCE between pooled, projected tokenizer features and projected caption embeddings.

    Negatives are every other pair of the global batch: embeddings are gathered across DDP ranks with gradients
    (each rank's loss covers its own rows against all columns).

    Args:
        feature: the tokenizer feature to pool (mean over positions), e.g. ``quantized``.
        embed_dim: size of the shared embedding space.
        weight: weight in the total loss.
        temperature: initial temperature; learned (as ``log(1 / temperature)``, clamped at 100).
        gather: gather negatives across ranks.
        detach_features: train only the projection heads on the tokenizer's features, which then get no
            gradient from the text (a linear probe: the baseline a contrastive run is compared with).
    """

    needs_text = True

    def __init__(self, feature: str = "quantized", embed_dim: int = 256, weight: float = 1.0,
                 temperature: float = 0.07, gather: bool = True, detach_features: bool = False) -> None:
        super().__init__()
        self.feature, self.features = feature, (feature,)
        self.embed_dim, self.weight, self.gather = embed_dim, weight, gather
        self.detach_features = detach_features
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self.image_head: nn.Module | None = None
        self.text_head: nn.Module | None = None

    def bind(self, feature_dims: dict[str, int], text_dim: int | None) -> None:
        if text_dim is None:
            raise ValueError("the image-text contrastive loss needs captions embedded by a text encoder: set "
                             "loss.text_encoder (and data with captions)")
        dim = feature_dims[self.feature]
        self.image_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.embed_dim))
        self.text_head = nn.Linear(text_dim, self.embed_dim)

    def embed(self, features: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, *grid, C)`` features and ``(B, D)`` captions -> unit ``(B, E)`` image and text embeddings."""
        if self.image_head is None or self.text_head is None:
            raise RuntimeError("bind() the term to the tokenizer's feature sizes before use")
        image = self.image_head(features.float().flatten(1, -2).mean(1))
        return F.normalize(image, dim=-1), F.normalize(self.text_head(text.float()), dim=-1)

    def forward(self, inputs: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
        if inputs.text is None:
            raise ValueError("the image-text contrastive loss got a batch without captions")
        features = inputs.output.features[self.feature]
        image, text = self.embed(features.detach() if self.detach_features else features, inputs.text)
        offset = 0
        if self.gather and is_distributed():
            offset = rank() * image.shape[0]
            all_text, all_image = gather_with_grad(text), gather_with_grad(image)
        else:
            all_text, all_image = text, image
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        labels = torch.arange(image.shape[0], device=image.device) + offset
        image_to_text = scale * image @ all_text.t()
        text_to_image = scale * text @ all_image.t()
        loss = 0.5 * (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels))
        accuracy = (image_to_text.argmax(1) == labels).float().mean()
        return self.weight * loss, {"loss": loss.detach(), "accuracy": accuracy.detach(),
                                    "temperature": (1 / scale).detach()}

