"""A frozen image teacher (CLIP, SigLIP, DINOv2 or any ``AutoModel`` returning patch tokens)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .loading import Frozen, load_transformers_model

# Normalisation each model family was trained with, when the folder carries no preprocessor_config.json.
NORMALIZATION = {
    "clip_vision_model": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class TeacherFeatures:
    """What an image teacher returns.

    Attributes:
        patches: ``(B, h, w, dim)`` patch features on the teacher's grid.
        pooled: ``(B, dim)`` image embedding (the model's pooled output, else the mean of the patches).
    """

    patches: Tensor
    pooled: Tensor


class ImageTeacher(Frozen):
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> frozen :class:`TeacherFeatures`.

    Images are resized to the teacher's resolution and normalised its way (``preprocessor_config.json`` in the
    folder, else the family's known statistics). Its weights never change; gradients reach the *input* when it
    requires them (a loss on a reconstruction's features), so call it under ``torch.no_grad()`` for targets.
    Under a bf16 autocast it runs in bf16.

    Args:
        source: folder or hub id of a vision model (``CLIPVisionModel``, ``SiglipVisionModel``, ``Dinov2Model``),
            or of an image-text model whose ``vision_model`` is used (``CLIPModel``, ``SiglipModel``).
        config: build a random one from a ``transformers`` config instead (toy runs; said in the log).
        image_size: input resolution; the model config's ``image_size`` by default.
        config_key: the key named when ``source`` cannot be loaded.
    """

    def __init__(self, source: str | None = None, config: dict[str, Any] | None = None,
                 image_size: int | None = None, config_key: str = "teacher.source") -> None:
        model = load_transformers_model(source, config, config_key, "image teacher")
        # A full image-text model (CLIPModel, SiglipModel, as hub ids usually name them): its vision tower.
        model = getattr(model, "vision_model", model)
        super().__init__(model)
        model_config = model.config
        self.image_size = int(image_size or model_config.image_size)
        self.patch_size = int(model_config.patch_size)
        self.dim = int(model_config.hidden_size)
        mean, std = _normalization(source, model_config.model_type)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def grid(self) -> tuple[int, int]:
        """The teacher's patch grid ``(h, w)``."""
        side = self.image_size // self.patch_size
        return side, side

    def forward(self, images: Tensor) -> TeacherFeatures:
        """``(B, 3, H, W)`` in ``[-1, 1]`` -> patches ``(B, h, w, dim)`` and pooled ``(B, dim)``."""
        pixels = (images.float() + 1) / 2
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic",
                                   antialias=True, align_corners=False).clamp(0, 1)
        out = self.network(pixel_values=(pixels - self.mean) / self.std)
        h, w = self.grid
        patches = out.last_hidden_state[:, -h * w:].unflatten(1, (h, w))  # class / register tokens lead
        pooled = getattr(out, "pooler_output", None)
        if pooled is None or pooled.ndim != 2:
            pooled = patches.mean((1, 2))
        return TeacherFeatures(patches.float(), pooled.float())


def _normalization(source: str | None, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if source and (Path(source) / "preprocessor_config.json").is_file():
        processor = json.loads((Path(source) / "preprocessor_config.json").read_text())
        if "image_mean" in processor and "image_std" in processor:
            return tuple(processor["image_mean"]), tuple(processor["image_std"])
    return NORMALIZATION.get(model_type, IMAGENET)
