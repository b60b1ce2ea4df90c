"""rFID: Frechet distance between Inception features of the originals and of their reconstructions.

The features are torchmetrics' ``FrechetInceptionDistance`` (2048-d pool features of the TF FID Inception-v3
that torch-fidelity ports). Its weights file comes from ``eval.inception_path``, the torch hub cache, or a
download; its SHA-256 goes into every report. The reference (original-image) statistics depend only on the
evaluation set, its crop and the weights, so they are cached to a file keyed by those and reused. Under DDP
torchmetrics sums the statistics over ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vtok.distributed import rank
from vtok.weights import FILES, resolve, sha256

log = logging.getLogger(__name__)

CONFIG_KEY = "eval.inception_path"
_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class FIDMeter:
    """Accumulates reference and reconstruction statistics; ``compute()`` gives the Frechet distance.

    Args:
        inception_path: the FID Inception weights file (``None``: torch hub cache, then download).
        feature: a custom feature extractor (an ``nn.Module`` with ``num_features`` mapping ``(B, 3, H, W)``
            floats in ``[0, 1]`` to ``(B, num_features)``) in place of Inception; for tests and other backbones.
        cache_dir: folder for cached reference statistics (``None``: not cached).
        reference: what identifies the reference set (data, crop, size, count); with the weights' hash it
            names the cache file.
        device: where the network runs.
        config_key: the key named when the weights file is missing.
    """

    def __init__(self, inception_path: str | None = None, feature: nn.Module | None = None,
                 cache_dir: str | Path | None = None, reference: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", config_key: str = CONFIG_KEY) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        if feature is None:
            weights = resolve("fid_inception", inception_path, config_key)
            self.weights = {"file": FILES["fid_inception"].filename, "sha256": sha256(weights)}
            if not self.weights["sha256"].startswith(FILES["fid_inception"].sha256_prefix):
                raise ValueError(f"{weights} is not the standard FID Inception file (sha256 "
                                 f"{self.weights['sha256'][:8]}..., expected "
                                 f"{FILES['fid_inception'].sha256_prefix}...)")
            self.metric = FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False,
                                                   feature_extractor_weights_path=str(weights))
        else:
            self.weights = {"file": None, "sha256": None, "custom_feature": type(feature).__name__}
            self.metric = FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=False)
        self.metric = self.metric.to(device)
        key = reference_cache_key({**(reference or {}), "weights": self.weights})
        self.cache_file = Path(cache_dir) / f"reference-{key}.pt" if cache_dir is not None else None
        cache_file = self.cache_file
        self.reference_cached = bool(cache_file and cache_file.is_file())
        if self.reference_cached:
            state = torch.load(cache_file, map_location=device, weights_only=True)
            for name in _REAL_STATES:
                setattr(self.metric, name, state[name].to(device))
            log.info("FID reference statistics read from %s", cache_file)

    def update(self, originals: Tensor, reconstructions: Tensor) -> None:
        """``(B, 3, H, W)`` images in ``[-1, 1]`` (Inception sees them resized to 299 x 299)."""
        self.update_reference(originals)
        self.update_generated(reconstructions)

    def update_reference(self, images: Tensor) -> None:
        """``(B, 3, H, W)`` reference images in ``[-1, 1]`` (skipped when their statistics were cached)."""
        if not self.reference_cached:
            self.metric.update(_unit(images), real=True)

    def update_generated(self, images: Tensor) -> None:
        """``(B, 3, H, W)`` reconstructed or sampled images in ``[-1, 1]``; their count need not match the
        reference's (generation FID compares a number of samples with a held-out set)."""
        self.metric.update(_unit(images), real=False)

    def compute(self) -> float:
        """The Frechet distance; writes the reference cache (rank 0) the first time."""
        if self.cache_file is not None and not self.reference_cached:
            with self.metric.sync_context():
                state = {name: getattr(self.metric, name).detach().cpu() for name in _REAL_STATES}
            if rank() == 0:
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                torch.save(state, self.cache_file)
                log.info("FID reference statistics cached to %s", self.cache_file)
        return float(self.metric.compute())


def reference_cache_key(protocol: dict[str, Any]) -> str:
    """A short stable hash of everything that determines the reference statistics."""
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _unit(images: Tensor) -> Tensor:
    return ((images.float().clamp(-1, 1) + 1) / 2)
