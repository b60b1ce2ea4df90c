"""End-to-end runs of `train.py` as a user types them."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from .conftest import ROOT, TOY

# Commands the README shows, run verbatim (in a scratch folder beside a link to train.py and configs/).
README_TOY = "python train.py experiment=titok_s128 scale=toy data=synthetic"
README_SEMANTIC_TOY = ["python train.py experiment=tokenflow scale=toy data=synthetic",
                       "python train.py experiment=unitok scale=toy data=synthetic"]


def _run(args, tmp_path, env=None, timeout=600):
    env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "train.py", f"paths.root_dir={tmp_path}", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_readme_command(command: str, folder, timeout=600) -> subprocess.CompletedProcess:
    """Run a README command exactly as written, from ``folder`` (which gets links to train.py and configs/)."""
    assert command in (ROOT / "README.md").read_text(), f"the README no longer shows {command!r}"
    for name in ("train.py", "configs"):
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name)
    argv = shlex.split(command)
    argv[0] = sys.executable
    return subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=timeout)


def test_readme_toy_command_runs_offline(tmp_path):
    result = run_readme_command(README_TOY, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "trained 3 steps" in result.stdout
    # titok_s128 trains with LPIPS: at toy size its backbone is random, and the log says so
    assert "LPIPS with a RANDOM backbone" in result.stdout + result.stderr
    assert (tmp_path / "outputs" / "titok_s128" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("command", README_SEMANTIC_TOY)
def test_readme_semantic_toy_commands_run_offline(command, tmp_path):
    result = run_readme_command(command, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "trained 3 steps" in result.stdout
    assert "RANDOM weights built from a" in result.stdout + result.stderr  # the toy teacher / text encoder


@pytest.mark.slow
def test_quickstart_cli_writes_report_and_picture(tmp_path):
    result = _run(["experiment=quickstart", "trainer.max_steps=12", "trainer.val_check_interval=6",
                   "quantizer.codebook_size=256", "eval.ar_probe=true", "probe.steps=5", "probe.train_images=32",
                   "probe.width=32", "probe.depth=1", "probe.heads=2", "probe.samples=2", *TOY], tmp_path)
    run_dir = tmp_path / "outputs" / "quickstart"
    assert f"report: {run_dir / 'report.json'}" in result.stdout
    assert "held-out PSNR" in result.stdout and "trained 12 steps" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "num_images", "train_steps", "train_seconds",
                "bits_per_pixel", "jpeg", "patch_mean", "codebook_usage_train", "perplexity_train"):
        assert key in report, key
    assert report["num_images"] == 8 and report["train_steps"] == 12  # the 8 test photos (eval.split=test)
    assert report["protocol"]["split"] == "test" and "test-000000.tar" in report["protocol"]["reference_set"]
    assert 0 < report["codebook_usage_train"] <= 1 and report["perplexity_train"] >= 1
    assert report["bits_per_pixel"] == pytest.approx(8 / 64)  # 256 codes = 8 bits per 8x8 token
    assert (run_dir / "reconstructions.png").stat().st_size > 0
    # eval.ar_probe=true: the prior on the tokens, on the 5 validation photos centre-cropped to 64 px
    probe = json.loads((run_dir / "probe" / "probe_report.json").read_text())
    assert f"probe report: {run_dir / 'probe' / 'probe_report.json'}" in result.stdout
    assert probe["images"] == probe["verified_round_trips"] == 5 and probe["train_steps"] == 12
    assert probe["raw_bits_per_pixel"] == pytest.approx(8 / 64) and probe["coded_bits_per_pixel"] > 0
    assert report["ar_probe"]["coded_bits_per_pixel"] == probe["coded_bits_per_pixel"]  # report.json keeps it
    from vtok.checkpoint import load_tokenizer
    from vtok.hub import model_card

    card = model_card(load_tokenizer(str(run_dir / "checkpoints" / "last.ckpt"))[0], "quickstart", report, None)
    assert "## Autoregressive probe" in card and "| WebP at the same PSNR |" in card
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "data" / "samples" / "manifest.json").exists()  # sample shards written once
    # a second run in the same directory starts afresh (overwrite=true) and keeps the old checkpoints aside
    _run(["experiment=quickstart", "trainer.max_steps=2", "evaluate=false", *TOY], tmp_path)
    assert list(run_dir.glob("checkpoints.old-*"))


def test_summary_warns_when_a_time_budget_allowed_far_fewer_steps_than_expected():
    from vtok.experiment import summary

    result = {"train_steps": 860, "train_seconds": 555.0, "time_budget": 555, "expected_steps_per_second": 4.5,
              "checkpoint": "c"}
    text = summary(result)
    assert "trained 860 steps in 555 s" in text and "WARNING: 1.5 steps/s" in text and "about 2,498" in text
    assert "WARNING" not in summary({**result, "train_steps": 2600})
    assert "WARNING" not in summary({**result, "time_budget": 30, "train_steps": 150, "train_seconds": 30.0})


@pytest.mark.slow
def test_all_loggers_including_wandb_offline(tmp_path):
    _run(["data=synthetic", "loss=pixel", "logger=all", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
          "callbacks.reconstruction_grid.every_n_steps=2", *TOY], tmp_path, env={"WANDB_MODE": "offline"})
    run_dir = tmp_path / "outputs" / "default"
    assert list(run_dir.glob("csv/version_*/metrics.csv"))
    assert list(run_dir.glob("tensorboard/version_*/events.out.tfevents.*"))
    assert list(run_dir.glob("wandb/offline-run-*"))
    assert (run_dir / "images" / "recon_0000002.png").exists()
    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as metrics:
        header = metrics.readline()
    for column in ("train/total", "train/codebook_usage", "train/codebook_perplexity", "train/lr",
                   "train/images_per_second", "train/quantizer/commitment"):
        assert column in header, column


# Every command: (argv, a key its --help must list). The small commands share vtok.cli; train and eval are Hydra's.
COMMANDS = {
    "train": ([sys.executable, "train.py", "--help"], "experiment"),
    "eval": ([sys.executable, "-m", "vtok.eval", "--help"], "ckpt"),
    "export": ([sys.executable, "-m", "vtok.hub", "--help"], "weights  (str, default 'ema')"),
    "shards": ([sys.executable, "-m", "vtok.data.shards", "--help"], "maxcount  (int, default 1000)"),
    "samples": ([sys.executable, "-m", "vtok.data.samples", "--help"], "force  (bool, default False)"),
    "weights": ([sys.executable, "-m", "vtok.weights", "--help"], "out  (str, required)"),
    "caption": ([sys.executable, "-m", "vtok.llm.caption", "--help"], "images  (list[str], required)"),
    "import": ([sys.executable, "-m", "vtok.import_published", "--help"], "format  (str, default 'auto')"),
    "probe": ([sys.executable, "-m", "vtok.probe", "--help"], "train_images"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_help_with_its_keys(name):
    argv, listed = COMMANDS[name]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert listed in result.stdout, result.stdout[-2000:]


def test_a_command_names_an_unknown_or_mistyped_key():
    from vtok.data.shards import main as shards_main

    for argv, message in ((["src=a", "out=b", "maxcout=3"], "maxcout"),
                          (["src=a", "out=b", "maxcount=three"], "maxcount")):
        code = f"from vtok.data.shards import main; raise SystemExit(main({argv!r}))"
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "vtok-shards --help" in result.stderr
    assert shards_main(["src=a"]) == 2  # out= missing
