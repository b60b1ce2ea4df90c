"""End-to-end runs of `train.py` as a user types them."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

TINY = [
    "model.encoder.channels=16", "model.encoder.channel_mult=[1,2]", "model.encoder.num_res_blocks=1",
    "model.encoder.patch_size=4", "quantizer.codebook_size=256",
]


def _run(args, tmp_path, env=None, timeout=600):
    env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "train.py", f"paths.root_dir={tmp_path}", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_quickstart_cli_writes_report_and_picture(tmp_path):
    result = _run(["experiment=quickstart", "trainer.max_steps=12", "trainer.val_check_interval=6",
                   "trainer.enable_progress_bar=false", *TINY], tmp_path)
    run_dir = tmp_path / "outputs" / "quickstart"
    assert f"report: {run_dir / 'report.json'}" in result.stdout
    assert "held-out PSNR" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "num_images", "train_steps", "train_seconds",
                "bits_per_pixel", "jpeg", "patch_mean", "codebook_usage_train", "perplexity_train"):
        assert key in report, key
    assert report["num_images"] == 5 and report["train_steps"] == 12  # the 5 held-out photos
    assert 0 < report["codebook_usage_train"] <= 1 and report["perplexity_train"] >= 1
    assert report["bits_per_pixel"] == pytest.approx(8 / 64)  # 256 codes = 8 bits per 8x8 token
    assert (run_dir / "reconstructions.png").stat().st_size > 0
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "data" / "samples" / "manifest.json").exists()  # sample shards written once
    # a second run in the same directory starts afresh (overwrite=true) and keeps the old checkpoints aside
    _run(["experiment=quickstart", "trainer.max_steps=2", "evaluate=false", "trainer.enable_progress_bar=false",
          *TINY], tmp_path)
    assert list(run_dir.glob("checkpoints.old-*"))


@pytest.mark.slow
def test_all_loggers_including_wandb_offline(tmp_path):
    _run(["data=synthetic", "loss=pixel", "logger=all", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
          "callbacks.reconstruction_grid.every_n_steps=2", "trainer.enable_progress_bar=false", *TINY], tmp_path,
         env={"WANDB_MODE": "offline"})
    run_dir = tmp_path / "outputs" / "default"
    assert list(run_dir.glob("csv/version_*/metrics.csv"))
    assert list(run_dir.glob("tensorboard/version_*/events.out.tfevents.*"))
    assert list(run_dir.glob("wandb/offline-run-*"))
    assert (run_dir / "images" / "recon_0000002.png").exists()
    header = open(next(run_dir.glob("csv/version_*/metrics.csv"))).readline()
    for column in ("train/total", "train/codebook_usage", "train/codebook_perplexity", "train/lr",
                   "train/images_per_second", "train/quantizer/commitment"):
        assert column in header, column
