"""Gram-matrix loss (AToken): the reconstruction's feature correlations match the original's."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vtok.teachers import ImageTeacher

from .term import LossTerm, TermInputs


def gram(features: Tensor) -> Tensor:
    """``(B, N, C)`` features -> ``(B, C, C)`` Gram matrices ``F^T F / (N C)``."""
    return features.transpose(1, 2) @ features / (features.shape[1] * features.shape[2])


class GramLoss(LossTerm):
    """``MSE(gram(net(reconstruction)), gram(net(original)))`` on a frozen network's patch features.

    The network is an image teacher; the gradient reaches the tokenizer through the reconstruction, so it
    works like a perceptual loss that matches texture statistics rather than positions.

    Args:
        teacher: an :class:`~vtok.teachers.ImageTeacher` or its keyword arguments.
        weight: weight in the total loss.
    """

    def __init__(self, teacher: ImageTeacher | dict[str, Any], weight: float = 1.0) -> None:
        super().__init__()
        self.teacher = teacher if isinstance(teacher, ImageTeacher) else ImageTeacher(**teacher)
        self.weight = weight

    def forward(self, inputs: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            target = gram(self.teacher(inputs.images).patches.flatten(1, 2))
        predicted = gram(self.teacher(inputs.output.reconstruction).patches.flatten(1, 2))
        loss = F.mse_loss(predicted, target)
        return self.weight * loss, {"loss": loss.detach()}
