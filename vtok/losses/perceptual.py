"""LPIPS perceptual distance with weights from a local path, the torch hub cache, or a download.

The ``lpips`` wheel ships the small linear heads; the VGG/AlexNet backbone comes from torchvision's weight
files. Where none of those is reachable (air-gapped clusters, this project's CI) construction stops with
:class:`MissingWeightsError` naming the file and the config key to set. It never falls back to a random
backbone unless ``random_backbone=True`` is asked for explicitly (wiring tests only: its numbers mean nothing).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

BACKBONES = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}
CONFIG_KEY = "loss.perceptual.backbone_path"


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are neither at the configured path nor downloadable."""


def resolve_weights(filename: str, url: str, path: str | None, config_key: str, what: str) -> Path:
    """Find a pretrained weights file: ``path`` if given, else the torch hub cache, else download it.

    Raises:
        MissingWeightsError: naming ``filename`` and ``config_key`` when the file cannot be had.
    """
    if path:
        if Path(path).is_file():
            return Path(path)
        raise MissingWeightsError(
            f"{what}: weights file {path} does not exist. Point {config_key}=/path/to/{filename} at a copy of "
            f"{url}."
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
        return cached
    except Exception as error:  # offline: URLError, socket errors, ...
        if cached.exists() and cached.stat().st_size == 0:
            cached.unlink()
        raise MissingWeightsError(
            f"{what} needs {filename} and could not download it ({type(error).__name__}: {error}). "
            f"Fetch {url} on a machine with network, then set {config_key}=/path/to/{filename} "
            f"or copy it to {cached}. `python -m vtok.weights` downloads every file a config needs."
        ) from error


class LPIPS(nn.Module):
    """``LPIPS(x, y)``: ``(B, 3, H, W)`` pairs in ``[-1, 1]`` -> ``(B,)`` perceptual distances. Frozen.

    Args:
        net: backbone, ``"vgg"`` (the usual choice for tokenizer training) or ``"alex"`` (the usual metric).
        backbone_path: local torchvision weights file for the backbone; ``None`` looks in the torch hub cache
            and then downloads.
        random_backbone: build with random backbone weights, for wiring tests only.
    """

    def __init__(self, net: str = "vgg", backbone_path: str | None = None, random_backbone: bool = False) -> None:
        super().__init__()
        import lpips

        if net not in BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; use {sorted(BACKBONES)}")
        filename, url = BACKBONES[net]
        state = None
        if random_backbone:
            log.warning("LPIPS with a RANDOM backbone: for wiring tests only, its values are not LPIPS")
        else:
            weights = resolve_weights(filename, url, backbone_path, CONFIG_KEY, f"LPIPS ({net})")
            state = torch.load(weights, map_location="cpu", weights_only=True)
        self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if state is not None:
            _load_backbone(self.model.net, state)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPS":
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
