"""Shared fixtures: tiny tokenizer configs, the repo root, and the optional ../shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_tokenizer_config(codebook_size: int = 64, **quantizer) -> dict:
    """A ~100k-parameter f4 conv VQ tokenizer."""
    trunk = {"kind": "conv", "channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention": True}
    return {
        "encoder": {**trunk, "out_dim": 16},
        "quantizer": {"kind": "vq", "codebook_size": codebook_size, "codebook_dim": 4, **quantizer},
        "decoder": dict(trunk),
        "image_size": 32,
    }


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
