"""Shared fixtures: tiny tokenizer configs, composed run configs at toy size, and the optional ../shared folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import vtok.config  # noqa: F401  (the config resolvers)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# What every test run of train.py adds: toy size (needs no download) and quiet output.
TOY = ["scale=toy", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def tiny_tokenizer_config(codebook_size: int = 64, **quantizer) -> dict:
    """A ~100k-parameter f4 conv VQ tokenizer."""
    trunk = {"kind": "conv", "channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention": True}
    return {
        "encoder": {**trunk, "out_dim": 16},
        "quantizer": {"kind": "vq", "codebook_size": codebook_size, "codebook_dim": 4, **quantizer},
        "decoder": dict(trunk),
        "image_size": 32,
    }


def compose_config(*overrides: str, root: Path | None = None, toy: bool = True) -> DictConfig:
    """The ``train.py`` config for ``overrides`` (``experiment=NAME``, ``key=value``), as the command line
    would compose it: at toy size unless ``toy=False``, writing under ``root``. Hydra's runtime is set, so
    the config can be instantiated and trained."""
    extra = [*TOY] if toy else []
    if root is not None:
        extra.append(f"paths.root_dir={root}")
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=[*overrides, *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def compose_run(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_run("experiment=NAME", "key=value", ...)``: that run's config at toy size, under ``tmp_path``."""

    def _compose(*overrides: str, toy: bool = True) -> DictConfig:
        return compose_config(*overrides, root=tmp_path, toy=toy)

    return _compose


@pytest.fixture
def tiny_config() -> dict:
    return tiny_tokenizer_config()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only CI and dev machines have ../shared)")
    return SHARED_DATA
