"""LPIPS perceptual distance with weights from a local path, the torch hub cache, or a download.

The ``lpips`` wheel ships the small linear heads; the VGG/AlexNet backbone comes from torchvision's weight
files. Where none of those is reachable (air-gapped clusters, this project's CI) construction stops with
:class:`MissingWeightsError` naming the file and the config key to set. It never falls back to a random
backbone unless ``random_backbone=True`` is asked for explicitly (wiring tests only: its numbers mean nothing).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from vtok.weights import MissingWeightsError, resolve

__all__ = ["LPIPS", "MissingWeightsError"]

log = logging.getLogger(__name__)

BACKBONES = {"vgg": "lpips_vgg", "alex": "lpips_alex"}  # names in vtok.weights.FILES
CONFIG_KEY = "loss.perceptual.backbone_path"


class LPIPS(nn.Module):
    """``LPIPS(x, y)``: ``(B, 3, H, W)`` pairs in ``[-1, 1]`` -> ``(B,)`` perceptual distances. Frozen.

    Args:
        net: backbone, ``"vgg"`` (the usual choice for tokenizer training) or ``"alex"`` (the usual metric).
        backbone_path: local torchvision weights file for the backbone; ``None`` looks in the torch hub cache
            and then downloads.
        random_backbone: build with random backbone weights, for wiring tests only.
        config_key: the config key named by the missing-weights error.
    """

    def __init__(self, net: str = "vgg", backbone_path: str | None = None, random_backbone: bool = False,
                 config_key: str = CONFIG_KEY) -> None:
        super().__init__()
        import lpips

        if net not in BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; use {sorted(BACKBONES)}")
        state = None
        if random_backbone:
            log.warning("LPIPS with a RANDOM backbone: for wiring tests only, its values are not LPIPS")
        else:
            weights = resolve(BACKBONES[net], backbone_path, config_key)
            state = torch.load(weights, map_location="cpu", weights_only=True)
        self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if state is not None:
            _load_backbone(self.model.net, state)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # dropout in the heads stays off

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.model(x.float(), y.float(), normalize=False).flatten()


def _load_backbone(backbone: nn.Module, torchvision_state: dict[str, Tensor]) -> None:
    """Copy torchvision ``features.{i}.*`` tensors into lpips' ``slice{k}.{i}.*`` modules."""
    mapped = {}
    for name in backbone.state_dict():
        _, index, kind = name.split(".")
        mapped[name] = torchvision_state[f"features.{index}.{kind}"]
    backbone.load_state_dict(mapped)
