"""Semantic distillation: tokenizer features regressed onto a frozen teacher's patch features."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtok.distributed import gather_list
from vtok.teachers import ImageTeacher

from .term import LossTerm, TermEvaluation, TermInputs

DISTANCES = ("cosine", "smooth_l1")


class SemanticDistillation(LossTerm):
    """A projection head on one named tokenizer feature, pulled towards the teacher's features.

    On a 2D feature grid the teacher's patch features are resampled (bilinear) to the grid and compared per
    position; a 1D token sequence (no grid) is mean-pooled and compared with the teacher's pooled embedding.

    Args:
        teacher: an :class:`~vtok.teachers.ImageTeacher` or its keyword arguments.
        feature: the tokenizer feature to supervise: ``encoder``, ``quantized``, ``quantized.semantic``,
            ``expanded``, ``encoder.NAME`` (see ``Tokenizer.feature_names``).
        weight: weight in the total loss.
        distance: ``cosine`` (``1 - cos`` per position) or ``smooth_l1`` (on the raw features).
        head: ``linear`` or ``mlp`` (two layers with GELU) projection to the teacher's size.
    """

    def __init__(self, teacher: ImageTeacher | dict[str, Any], feature: str = "encoder", weight: float = 1.0,
                 distance: str = "cosine", head: str = "mlp") -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r}: use one of {list(DISTANCES)}")
        if head not in ("linear", "mlp"):
            raise ValueError(f"head={head!r}: use linear or mlp")
        self.teacher = teacher if isinstance(teacher, ImageTeacher) else ImageTeacher(**teacher)
        self.feature, self.features = feature, (feature,)
        self.weight, self.distance, self.head_kind = weight, distance, head
        self.head: nn.Module | None = None

    def bind(self, feature_dims: dict[str, int], text_dim: int | None) -> None:
        dim, out = feature_dims[self.feature], self.teacher.dim
        self.head = nn.Linear(dim, out) if self.head_kind == "linear" else nn.Sequential(
            nn.Linear(dim, out), nn.GELU(), nn.Linear(out, out))

    def predict_and_target(self, images: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, *grid, C)`` tokenizer features -> projected ``(B, N, D)`` and teacher ``(B, N, D)`` targets."""
        if self.head is None:
            raise RuntimeError("bind() the term to the tokenizer's feature sizes before use")
        with torch.no_grad():
            taught = self.teacher(images)
        predicted = self.head(features.float())
        if predicted.ndim == 4:  # (B, h, w, D): the teacher's grid resampled to the tokenizer's
            target = taught.patches.permute(0, 3, 1, 2)
            if target.shape[-2:] != predicted.shape[1:3]:
                target = F.interpolate(target, size=predicted.shape[1:3], mode="bilinear", align_corners=False)
            return predicted.flatten(1, 2), target.permute(0, 2, 3, 1).flatten(1, 2)
        return predicted.flatten(1, -2).mean(1, keepdim=True), taught.pooled.unsqueeze(1)

    def cosine(self, images: Tensor, features: Tensor) -> Tensor:
        """``(B,)`` mean cosine between projected features and the teacher's (the evaluation's figure)."""
        predicted, target = self.predict_and_target(images, features)
        return F.cosine_similarity(predicted, target, dim=-1).mean(1)

    def evaluation(self) -> DistillationEvaluation:
        return DistillationEvaluation(self)

    def forward(self, inputs: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
        predicted, target = self.predict_and_target(inputs.images, inputs.output.features[self.feature])
        cosine = F.cosine_similarity(predicted, target, dim=-1)
        if self.distance == "cosine":
            loss = (1 - cosine).mean()
        else:
            loss = F.smooth_l1_loss(predicted, target)
        return self.weight * loss, {"loss": loss.detach(), "cosine": cosine.mean().detach()}


class DistillationEvaluation(TermEvaluation):
    """Agreement with the teacher on held-out images."""

    protocol = ("mean cosine between the tokenizer's projected features and the teacher's, per image (over "
                "positions) then over images")

    def __init__(self, term: SemanticDistillation) -> None:
        self.term, self.cosines = term, []

    def update(self, inputs: TermInputs) -> None:
        self.cosines += self.term.cosine(inputs.images, inputs.output.features[self.term.feature]).tolist()

    def gather(self) -> None:
        self.cosines = gather_list(self.cosines)

    def report(self) -> dict[str, Any]:
        if not self.cosines:
            return {}
        cosine = float(torch.tensor(self.cosines).mean())
        return {"teacher_cosine": cosine, "feature": self.term.feature, "num_images": len(self.cosines),
                "summary": [f"cosine to the teacher {cosine:.3f} on {len(self.cosines)} held-out images"]}
