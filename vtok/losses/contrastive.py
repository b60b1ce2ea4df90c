"""Image-text contrastive loss (InfoNCE, as in CLIP / VILA-U / UniTok) between tokenizer features and captions."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.distributed import gather_list, gather_with_grad, is_distributed, rank

from .term import LossTerm, TermEvaluation, TermInputs

RECALL_AT = (1, 5)


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
        pool: ``mean`` over positions, or the ``last`` token (a causal sequence's final embedding, which has read
            every earlier one: SEED's contrastive target).
    """

    needs_text = True

    def __init__(self, feature: str = "quantized", embed_dim: int = 256, weight: float = 1.0,
                 temperature: float = 0.07, gather: bool = True, detach_features: bool = False,
                 pool: str = "mean") -> None:
        super().__init__()
        self.feature, self.features = feature, (feature,)
        self.embed_dim, self.weight, self.gather = embed_dim, weight, gather
        self.detach_features = detach_features
        if pool not in ("mean", "last"):
            raise ValueError(f"loss.terms.contrastive.pool={pool!r}: mean or last")
        self.pool = pool
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
        flat = features.float().flatten(1, -2)
        image = self.image_head(flat[:, -1] if self.pool == "last" else flat.mean(1))
        return F.normalize(image, dim=-1), F.normalize(self.text_head(text.float()), dim=-1)

    def evaluation(self) -> ContrastiveEvaluation:
        return ContrastiveEvaluation(self)

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



class ContrastiveEvaluation(TermEvaluation):
    """Image-to-caption retrieval among all held-out images (needs captions)."""

    protocol = ("each held-out image and its caption (the first, when it has several) embedded; recall@1 and "
                "recall@5 of finding an image's own caption among all held-out captions, with chance (k / N)")

    def __init__(self, term: ImageTextContrastive) -> None:
        self.term = term
        self.images: list[Tensor] = []
        self.captions: list[Tensor] = []

    def update(self, inputs: TermInputs) -> None:
        if inputs.text is None:
            return
        image, caption = self.term.embed(inputs.output.features[self.term.feature], inputs.text)
        self.images.append(image.cpu())
        self.captions.append(caption.cpu())

    def gather(self) -> None:
        self.images, self.captions = gather_list(self.images), gather_list(self.captions)

    def report(self) -> dict[str, Any]:
        if not self.images:
            return {}
        figures = {**retrieval(torch.cat(self.images), torch.cat(self.captions)), "feature": self.term.feature}
        figures["summary"] = [
            f"image-to-caption R@1 {figures['recall_at_1']:.1%} (chance {figures['chance_at_1']:.1%}), R@5 "
            f"{figures['recall_at_5']:.1%} (chance {figures['chance_at_5']:.1%}) over {figures['num_images']} "
            "held-out images"]
        return figures


def retrieval(images: Tensor, captions: Tensor) -> dict[str, Any]:
    """``(N, E)`` unit image and caption embeddings (row ``i`` of each belongs together) -> image-to-caption
    recall@k and chance ``k / N``."""
    similarity = images @ captions.t()
    own = similarity.diagonal().unsqueeze(1)
    rank_of_own = (similarity > own).sum(1)  # captions scored above the image's own (ties count in its favour)
    n = images.shape[0]
    out: dict[str, Any] = {"num_images": n}
    for k in RECALL_AT:
        out[f"recall_at_{k}"] = float((rank_of_own < k).float().mean())
        out[f"chance_at_{k}"] = min(1.0, k / n)
    return out
