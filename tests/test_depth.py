"""Depth maps as tokenizer inputs (AURORA): 16-bit one-channel members read in float, a one-channel tokenizer,
depth errors in metres, export."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vtok.data import BadImage, DepthTransform, ShardDataset, decode_depth, write_shards


def _depth_png(millimetres: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(millimetres.astype(np.uint16)).save(buffer, format="PNG")  # mode I;16
    return buffer.getvalue()


def _scene(seed: int, size: int = 48) -> np.ndarray:
    """A room-like depth map in millimetres: a tilted floor plane and a nearer box."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    depth = 2000 + 6000 * y * rng.uniform(0.5, 1.0) + 500 * x
    top, left = rng.integers(0, size // 2, 2)
    depth[top: top + size // 3, left: left + size // 3] = rng.uniform(800, 1500)
    return depth


def test_sixteen_bit_depth_keeps_every_millimetre_and_colour_images_are_refused():
    millimetres = np.array([[0, 1, 12345], [40000, 65535, 7]] * 8, dtype=np.uint16).repeat(8, axis=1)
    metres = decode_depth(_depth_png(millimetres))
    assert metres.shape == (1, 16, 24) and metres.dtype == torch.float32
    assert torch.allclose(metres[0], torch.from_numpy(millimetres.astype(np.float32)) * 0.001)  # no 8-bit rounding
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, format="PNG")
    with pytest.raises(BadImage, match="not_depth"):
        decode_depth(buffer.getvalue())
    view = DepthTransform(size=16, mode="center", flip=False, max_depth=10.0)(metres, np.random.default_rng(0))
    assert view.shape == (1, 16, 16) and float(view.min()) >= -1 and float(view.max()) <= 1
    assert float(view[0, 0, 0]) == pytest.approx(-1.0)  # 0 m -> -1


@pytest.fixture(scope="module")
def depth_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth")
    photo = io.BytesIO()
    Image.new("RGB", (48, 48), (90, 120, 30)).save(photo, format="JPEG")

    def items(offset: int, count: int):
        for i in range(count):  # each sample carries its photo and its depth map, as AURORA's data would
            yield f"s{offset + i:04d}", _depth_png(_scene(offset + i)), "depth.png", None

    write_shards(items(0, 24), root, prefix="train", progress=False)
    write_shards(items(100, 6), root, prefix="val", progress=False)
    return root


def test_the_reader_picks_the_depth_member(depth_shards):
    stream = ShardDataset(str(depth_shards / "val-000000.tar"), DepthTransform(size=32, mode="center", flip=False),
                          resampled=False, shuffle_buffer=0, member="depth.png")
    samples = list(stream)
    assert len(samples) == 6 and all(s["image"].shape == (1, 32, 32) for s in samples)


@pytest.mark.slow
def test_a_depth_tokenizer_trains_reports_depth_errors_and_exports_bit_identical(depth_shards, compose_run, tmp_path):
    from vtok import Tokenizer
    from vtok.experiment import run as train
    from vtok.hub import main as export_main

    cfg = compose_run("experiment=aurora_depth", f"data.train.urls={depth_shards}/train-000000.tar",
                      f"data.val.urls={depth_shards}/val-000000.tar", "data.num_workers=0", "data.batch_size=8",
                      "data.train.shuffle_buffer=8", "trainer.max_steps=60", "evaluate=true", "eval.split=val",
                      "module.lr=2e-3", "module.warmup_steps=5")
    result = train(cfg)
    with open(result["report"]["report_path"]) as f:
        report = json.load(f)
    depth = report["depth"]
    assert depth["max_depth"] == 10.0 and report["num_images"] == 6
    # a flat guess at 5 m is ~2.5 m off these 1-8 m scenes; 60 steps of the toy VQ-VAE must do better
    assert depth["rmse"] < 1.5 and depth["abs_rel"] < 0.5 and depth["delta1"] > 0.3, depth
    assert "jpeg" not in report  # RGB codecs say nothing about depth
    assert export_main([f"ckpt={result['checkpoint']}", f"out={tmp_path / 'exported'}"]) == 0
    exported = Tokenizer.from_pretrained(str(tmp_path / "exported"))
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    from vtok.checkpoint import load_tokenizer

    trained = load_tokenizer(result["checkpoint"])[0]
    with torch.no_grad():
        assert torch.equal(exported.encode(images).indices, trained.encode(images).indices)
        assert torch.equal(exported.decode(exported.encode(images)), trained.decode(trained.encode(images)))
