"""Faults: kill -9 at any step, a full disk, damaged checkpoints, NaN, invalid configs, hostile artifacts.

Each test here failed on the code before the fault handling it proves (see the closing note of the faults issue).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vtok import Tokenizer
from vtok.config_checks import ConfigError
from vtok.data import SyntheticCaptions
from vtok.experiment import run as train
from vtok.losses import TokenizerLoss
from vtok.tokenizers.errors import InvalidPretrainedError
from vtok.training import TokenizerModule
from vtok.training.checkpoint_io import (
    CheckpointWriteError,
    UnreadableCheckpointError,
    atomic_torch_save,
    newest_good_checkpoint,
)
from vtok.training.module import NonFiniteTrainingError

from .conftest import ROOT, TOY, tiny_tokenizer_config

pytestmark = pytest.mark.faults

RUN = ["experiment=vqgan_f16", "data=synthetic", "trainer=cpu", "loss.perceptual_weight=0",
       "callbacks.reconstruction_grid.every_n_steps=1000"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _losses(run_dir: Path) -> dict[int, float]:
    """Per-step training loss over every CSV version of a run (a resumed run's rows replace the killed one's)."""
    losses: dict[int, float] = {}
    for version in sorted(run_dir.glob("csv/version_*"), key=lambda p: int(p.name.split("_")[1])):
        with open(version / "metrics.csv") as f:
            losses.update({int(r["step"]): float(r["train/total"]) for r in csv.DictReader(f) if r.get("train/total")})
    return losses


# ------------------------------------------------------------------------------------------------ preemption
@pytest.mark.slow
def test_kill_9_at_three_random_steps_then_resume_auto_gives_the_uninterrupted_losses(tmp_path):
    steps = 8
    common = [sys.executable, "train.py", f"paths.root_dir={tmp_path}", *RUN, *TOY, f"trainer.max_steps={steps}",
              "trainer.deterministic=true", "trainer.log_every_n_steps=1", "trainer.val_check_interval=100",
              "callbacks.model_checkpoint.every_n_train_steps=1"]
    subprocess.run([*common, "run_name=whole"], cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=300)
    kills = sorted(random.Random(0).sample(range(2, steps), 3))
    for attempt, step in enumerate([*kills, None]):
        killer = [] if step is None else ["+callbacks.kill._target_=helpers.KillAtStep", f"+callbacks.kill.step={step}"]
        result = subprocess.run([*common, "run_name=killed", "resume=auto", *killer], cwd=ROOT, env=_env(),
                                capture_output=True, text=True, timeout=300)
        if step is None:
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            assert result.returncode == -signal.SIGKILL, (attempt, result.stderr[-3000:])
    whole, killed = _losses(tmp_path / "outputs/whole"), _losses(tmp_path / "outputs/killed")
    assert sorted(whole) == sorted(killed) == list(range(steps))  # no step skipped
    assert killed == whole  # bit-identical with trainer.deterministic=true
    final = torch.load(tmp_path / "outputs/killed/checkpoints/last.ckpt", weights_only=False)
    reference = torch.load(tmp_path / "outputs/whole/checkpoints/last.ckpt", weights_only=False)
    assert final["global_step"] == steps
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, final["state_dict"][key]), key


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)
    script = (
        "import os, signal, torch\n"
        "from vtok.training import checkpoint_io\n"
        "real = torch.save\n"
        "def dying_save(obj, f):\n"
        "    f.write(b'PK' + b'x' * 100000)\n"  # half a file
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "checkpoint_io.torch.save = dying_save\n"
        f"checkpoint_io.atomic_torch_save({{'state_dict': {{'w': torch.zeros(3)}}, 'global_step': 2}}, r'{target}')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300)
    assert result.returncode == -signal.SIGKILL
    checkpoint = torch.load(target, weights_only=True)
    assert checkpoint["global_step"] == 1 and torch.equal(checkpoint["state_dict"]["w"], torch.ones(3))
    assert newest_good_checkpoint(tmp_path)[0] == target  # the left-over temporary file is not a candidate


def test_a_full_disk_during_a_save_stops_the_run_clearly_and_keeps_the_previous_checkpoint(tmp_path, compose_run,
                                                                                          monkeypatch):
    from vtok.training import checkpoint_io

    real_save, saves = torch.save, []

    def filling_save(obj, f):
        saves.append(1)
        if len(saves) == 1:
            return real_save(obj, f)
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", filling_save)
    cfg = compose_run(*RUN, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2",
                      "callbacks.model_checkpoint.save_last=false", "callbacks.final_checkpoint=null")
    with pytest.raises(CheckpointWriteError, match="the disk is full"):
        train(cfg)
    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)
    folder = tmp_path / "outputs/vqgan_f16/checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step0000002.ckpt"]  # nothing half-written left
    assert torch.load(folder / "step0000002.ckpt", weights_only=False)["global_step"] == 2


def test_a_truncated_checkpoint_is_named_and_resume_auto_falls_back_to_the_newest_good_one(tmp_path, compose_run,
                                                                                          caplog):
    common = [*RUN, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2"]
    train(compose_run(*common))
    folder = tmp_path / "outputs/vqgan_f16/checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a save cut short
    with pytest.raises(UnreadableCheckpointError, match=r"last\.ckpt"):
        train(compose_run(*common, f"ckpt_path={last}"))
    (folder / "step0000004.ckpt").write_bytes(b"")  # and the newest periodic one is empty
    result = train(compose_run(*common[:-2], "trainer.max_steps=5", "resume=auto"))
    assert result["train_steps"] == 5
    log = caplog.text
    assert "skipping checkpoint" in log and "last.ckpt" in log and "step0000002.ckpt" in log


# ---------------------------------------------------------------------------------- the final state is kept
def test_the_final_state_is_checkpointed_whatever_ends_the_run(tmp_path, compose_run):
    # steps: 5 is not a multiple of the checkpoint interval 3
    result = train(compose_run(*RUN, "run_name=steps", "trainer.max_steps=5",
                               "callbacks.model_checkpoint.every_n_train_steps=3"))
    last = torch.load(tmp_path / "outputs/steps/checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] == result["train_steps"] == 5
    # the time budget: ends on the clock, at a step nobody chose
    result = train(compose_run(*RUN, "run_name=budget", "trainer.max_steps=10000", "module.time_budget=2",
                               "callbacks.model_checkpoint.every_n_train_steps=1000"))
    last = torch.load(tmp_path / "outputs/budget/checkpoints/last.ckpt", weights_only=False)
    assert 0 < result["train_steps"] < 10000 and last["global_step"] == result["train_steps"]


@pytest.mark.slow
def test_sigterm_stops_at_a_step_boundary_with_that_step_checkpointed(tmp_path):
    marker = tmp_path / "stalled"
    command = [sys.executable, "train.py", f"paths.root_dir={tmp_path}", *RUN, *TOY, "trainer.max_steps=100000",
               "callbacks.model_checkpoint.every_n_train_steps=100000", "+callbacks.mark._target_=helpers.MarkStep",
               "+callbacks.mark.step=3", f"+callbacks.mark.marker={marker}"]
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    last = torch.load(tmp_path / "outputs/vqgan_f16/checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] >= 3, stderr[-3000:]


def test_an_export_names_the_step_of_its_weights_and_of_its_report(tmp_path, compose_run):
    from vtok.hub import main as export_main

    train(compose_run(*RUN, "trainer.max_steps=3", "evaluate=true"))
    run_dir = tmp_path / "outputs/vqgan_f16"
    export_main([f"ckpt={run_dir / 'checkpoints/last.ckpt'}", f"out={tmp_path / 'exported'}"])
    config = json.loads((tmp_path / "exported/config.json").read_text())
    assert config["weights_step"] == config["report_step"] == 3
    assert "step 3" in (tmp_path / "exported/README.md").read_text()


# ------------------------------------------------------------------------------------------------ divergence
class _PoisonedImages(Dataset):
    """Synthetic images; the batches listed in ``bad`` are NaN."""

    def __init__(self, bad: set[int], batch: int = 4) -> None:
        self.data, self.bad, self.batch = SyntheticCaptions(length=64, size=32), bad, batch

    def __len__(self) -> int:
        return 400

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.data[i % len(self.data)])
        if i // self.batch in self.bad:
            sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        state = {f"tokenizer.{k}": v.clone() for k, v in module.tokenizer.state_dict().items()}
        state.update({f"ema.{k}": v.clone() for k, v in module.ema.model.state_dict().items()})
        self.states[trainer.global_step] = state


def _fit(bad: set[int], steps: int, max_bad_steps: int = 3, checkpoints: Path | None = None
         ) -> tuple[TokenizerModule, _Snapshots]:
    torch.manual_seed(0)
    module = TokenizerModule(Tokenizer(**tiny_tokenizer_config(restart_threshold=0.5)), TokenizerLoss(),
                             lr=1e-3, warmup_steps=1, ema_decay=0.9, max_bad_steps=max_bad_steps)
    snapshots = _Snapshots()
    callbacks: list = [snapshots]
    if checkpoints is not None:  # a checkpoint after every step, all kept
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=checkpoints, filename="{step}",
                                                             every_n_train_steps=1, save_top_k=-1))
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=checkpoints is not None,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, DataLoader(_PoisonedImages(bad), batch_size=4))
    return module, snapshots


def test_a_nan_step_is_skipped_and_never_reaches_weights_ema_or_codebook():
    module, snapshots = _fit(bad={3, 4}, steps=7)
    assert module.skipped_steps == 2 and module.global_step == 7  # counted; the data position still advances
    for step in (4, 5):  # after the two bad batches: exactly the state before them
        for name, value in snapshots.states[3].items():
            assert torch.equal(snapshots.states[step][name], value), (step, name)
    for state in snapshots.states.values():
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not torch.equal(snapshots.states[6]["tokenizer.quantizer.codebook"],
                           snapshots.states[5]["tokenizer.quantizer.codebook"]) or \
        not torch.equal(snapshots.states[6]["tokenizer.encoder.conv_in.weight"],
                        snapshots.states[5]["tokenizer.encoder.conv_in.weight"])  # training went on


def test_a_nan_step_never_reaches_a_checkpoint_file(tmp_path):
    """Checkpoints written after every step, two of them right after NaN batches: read back from disk, every
    tensor in each (weights, EMA, optimiser state) is finite, and the files after the bad steps hold exactly the
    weights of the file before them."""
    from vtok.checkpoint import read_checkpoint

    _fit(bad={3, 4}, steps=7, checkpoints=tmp_path)
    files = {read_checkpoint(path).step: read_checkpoint(path) for path in tmp_path.glob("*.ckpt")}
    assert sorted(files) == list(range(1, 8))

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from tensors(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from tensors(item)

    for step, checkpoint in files.items():
        found = list(tensors({"state": checkpoint.state_dict, "ema": checkpoint.ema,
                              "optimizer": checkpoint.raw["optimizer_states"]}))
        assert len(found) > 20
        assert all(torch.isfinite(t).all() for t in found if t.is_floating_point()), step
    for step in (4, 5):  # written after the NaN batches 3 and 4: the state after step 3, bit for bit
        for name, value in files[3].state_dict.items():
            assert torch.equal(files[step].state_dict[name], value), (step, name)
        for name, value in files[3].ema["weights"].items():
            assert torch.equal(files[step].ema["weights"][name], value), (step, name)
    assert not torch.equal(files[7].state_dict["tokenizer.encoder.layers.1.weight"],
                           files[5].state_dict["tokenizer.encoder.layers.1.weight"])  # training went on


def test_too_many_bad_steps_in_a_row_stop_the_run_naming_the_step():
    with pytest.raises(NonFiniteTrainingError, match=r"3 steps in a row \(up to step 4\)"):
        _fit(bad={2, 3, 4, 5}, steps=8, max_bad_steps=3)


# ----------------------------------------------------------------------------------------- invalid configs
@pytest.mark.parametrize(("overrides", "message"), [
    (["module.lr=-1"], "module.lr=-1: must be a number > 0"),
    (["quantizer.codebook_size=0"], "quantizer.codebook_size=0: must be an integer >= 2"),
    (["experiment=titok_s128", "data.image_size=36"], "not a multiple of the patch size"),
    (["quantizer=fsq", "quantizer.levels=[1,8,8]"], "quantizer.levels=[1, 8, 8]: must be a non-empty list of "
                                                    "integers >= 2"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5: must be an integer >= 1"),
])
def test_invalid_values_stop_before_training_with_the_key_and_range(compose_run, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as error:
        train(compose_run("data=synthetic", *overrides))
    assert message in str(error.value)
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


# ------------------------------------------------------------------------------------- hostile artifacts
def _mutations(config: dict, rng: random.Random):
    """Random changes of a tokenizer's config.json (as JSON text): values, types, kinds, sizes, nesting."""
    hostile = [0, -1, 10**12, 2**40, 1e308, float("nan"), "", "os.system", [], {}, None, True, "x" * 1000,
               [1] * 100, {"_target_": "os.system"}, 3.5, -(10**9), [0, 0], "conv", "vq"]

    def paths(value, prefix=()):
        if isinstance(value, dict):
            for key, item in value.items():
                yield from paths(item, (*prefix, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from paths(item, (*prefix, i))
        yield prefix

    targets = [p for p in paths(config["tokenizer"]) if p]
    for _ in range(240):
        mutated = json.loads(json.dumps(config))
        path = rng.choice(targets)
        node = mutated["tokenizer"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = rng.choice(hostile)
        yield json.dumps(mutated)
    marker = '"channel_mult": "DEEP"'
    for depth in (50, 5000):  # nesting (5000 exceeds Python's own recursion limit when parsed)
        deep = {**config, "tokenizer": {**config["tokenizer"], "encoder": {**config["tokenizer"]["encoder"],
                                                                            "channel_mult": "DEEP"}}}
        yield json.dumps(deep).replace(marker, '"channel_mult": ' + "[" * depth + "1" + "]" * depth)
    yield json.dumps({**config, "tokenizer": {**config["tokenizer"], "quantizer": {"kind": "torch.nn.Linear"}}})
    yield json.dumps({**config, "family": "os.system"})
    yield "not json at all {"
    yield '{"format": "vtok-tokenizer", "family": "Tokenizer", "tokenizer": ' + "\xff" + "}"


def _header_mutations(weights: bytes, rng: random.Random):
    """Mutated safetensors files: header length, offsets, dtypes, shapes, truncation."""
    (length,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8: 8 + length])
    data = weights[8 + length:]

    def pack(h: dict, body: bytes = data) -> bytes:
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + body

    yield struct.pack("<Q", 2**62) + weights[8:]
    yield weights[: len(weights) // 2]
    yield weights[:5]
    yield struct.pack("<Q", length) + b"{" * length + data
    names = [n for n in header if n != "__metadata__"]
    for _ in range(60):
        h = json.loads(json.dumps(header))
        name = rng.choice(names)
        change = rng.randrange(6)
        if change == 0:
            h[name]["data_offsets"] = [0, 2**60]
        elif change == 1:
            h[name]["dtype"] = rng.choice(["I32", "F16", "I64", "BOOL", "F64", "X9"])
        elif change == 2:
            h[name]["shape"] = [*h[name]["shape"], 2] if rng.random() < 0.5 else [10**9]
        elif change == 3:
            h[name]["data_offsets"] = [h[name]["data_offsets"][0] + 4, h[name]["data_offsets"][1] + 4]
        elif change == 4:
            del h[name]
        else:
            h[name] = {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}
        yield pack(h)


@pytest.mark.slow
def test_mutated_artifacts_are_refused_with_vtoks_error(tmp_path):
    from .helpers import peak_rss_growth_mib, reset_peak_rss

    torch.manual_seed(0)
    Tokenizer(**tiny_tokenizer_config()).save_pretrained(str(tmp_path / "good"))
    config = json.loads((tmp_path / "good/config.json").read_text())
    weights = (tmp_path / "good/model.safetensors").read_bytes()
    rng = random.Random(0)
    folder = tmp_path / "mutant"
    folder.mkdir()
    outcomes = {"refused": 0, "loaded": 0}
    before = reset_peak_rss()
    cases = [(c, weights) for c in _mutations(config, rng)]
    cases += [(json.dumps(config), w) for w in _header_mutations(weights, rng)]
    for i, (mutated_config, mutated_weights) in enumerate(cases):
        (folder / "config.json").write_text(mutated_config)
        (folder / "model.safetensors").write_bytes(mutated_weights)
        start = time.monotonic()
        try:
            Tokenizer.from_pretrained(str(folder))
            outcomes["loaded"] += 1
        except InvalidPretrainedError:
            outcomes["refused"] += 1
        assert time.monotonic() - start < 5, (i, mutated_config[:300])
    assert outcomes["refused"] >= 200, outcomes
    # nothing allocated on the scale the configs asked for (10^12 codes, 10^9-long tensors)
    assert peak_rss_growth_mib(before) < 512


def _resave(weights: bytes, change) -> bytes:
    """A safetensors file with its header changed by ``change(header)`` (data unchanged)."""
    (length,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8: 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + weights[8 + length:]


def test_malformed_folders_and_checkpoints_get_vtoks_errors_before_any_large_allocation(tmp_path):
    """The escapes a mutation run found: values of the wrong type where a name is read (family, dtype), files
    that are links to devices or folders, every malformed entry of a ``.ckpt``, and a valid file followed by an
    8 GiB sparse tail. Each is refused with vtok's documented error, naming the file, before a model is built."""
    from vtok.checkpoint import UnreadableCheckpointError, load_tokenizer

    torch.manual_seed(0)
    tokenizer = Tokenizer(**tiny_tokenizer_config())
    tokenizer.save_pretrained(str(tmp_path / "good"))
    config = json.loads((tmp_path / "good/config.json").read_text())
    weights = (tmp_path / "good/model.safetensors").read_bytes()
    first = next(k for k in tokenizer.state_dict())

    def folder(name: str, config_json=None, weights_file=None, link: dict | None = None) -> Path:
        out = tmp_path / name
        out.mkdir()
        for file, target in (link or {}).items():
            os.symlink(target, out / file)
        if "config.json" not in (link or {}):
            (out / "config.json").write_text(json.dumps(config_json or config))
        if "model.safetensors" not in (link or {}):
            (out / "model.safetensors").write_bytes(weights if weights_file is None else weights_file)
        return out

    sparse = folder("sparse_tail")
    with open(sparse / "model.safetensors", "r+b") as f:
        f.truncate(len(weights) + 8 * 2**30)  # 8 GiB of holes: no disk, but a size allowance if believed
    folders = {
        folder("family_list", {**config, "family": ["Tokenizer"]}): "unknown tokenizer family",
        folder("family_dict", {**config, "family": {"Tokenizer": 1}}): "unknown tokenizer family",
        folder("dtype_list", weights_file=_resave(weights, lambda h: h[first].update(dtype=["F32"]))): "dtype",
        folder("dtype_dict", weights_file=_resave(weights, lambda h: h[first].update(dtype={"F32": 1}))): "dtype",
        folder("weights_device", link={"model.safetensors": "/dev/zero"}): "not a regular file .*/dev/zero",
        folder("config_device", link={"config.json": "/dev/urandom"}): "not a regular file .*/dev/urandom",
        folder("weights_folder", link={"model.safetensors": str(tmp_path)}): "not a regular file",
        sparse: "8,589,934,592 bytes after the last tensor",
    }
    for path, match in folders.items():
        with pytest.raises(InvalidPretrainedError, match=match):
            Tokenizer.from_pretrained(str(path))

    state = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
    good = {"tokenizer_config": tokenizer.config, "state_dict": state, "global_step": 3,
            "ema": {"decay": 0.9, "updates": 1, "weights": tokenizer.state_dict()}}
    checkpoints = {
        "step_text": {**good, "global_step": "abc"}, "step_list": {**good, "global_step": [1]},
        "state_list": {**good, "state_dict": [1, 2]}, "state_int_keys": {**good, "state_dict": {1: 2}},
        "no_state": {k: v for k, v in good.items() if k != "state_dict"}, "ema_list": {**good, "ema": [1, 2]},
        "ema_no_weights": {**good, "ema": {"decay": 0.9}}, "ema_weights_list": {**good, "ema": {"weights": [1]}},
        "config_list": {**good, "tokenizer_config": [1]}, "terms_list": {**good, "loss_terms": [1]},
        "terms_text": {**good, "loss_terms": "x"}, "a_list": [1, 2],
    }
    for name, content in checkpoints.items():
        torch.save(content, tmp_path / f"{name}.ckpt")
    (tmp_path / "safetensors.ckpt").write_bytes(weights)
    torch.save(good, tmp_path / "sparse_tail.ckpt")
    with open(tmp_path / "sparse_tail.ckpt", "r+b") as f:
        f.truncate((tmp_path / "sparse_tail.ckpt").stat().st_size + 8 * 2**30)
    for name in [*checkpoints, "safetensors", "sparse_tail"]:
        with pytest.raises(UnreadableCheckpointError, match=f"{name}.ckpt"):
            load_tokenizer(tmp_path / f"{name}.ckpt")
    load_tokenizer(tmp_path / "good/")  # the unmutated artifacts load


def test_a_checkpoints_tokenizer_config_is_checked_like_an_exported_one(tmp_path):
    from vtok.checkpoint import load_tokenizer

    tokenizer = Tokenizer(**tiny_tokenizer_config())
    state = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
    for config, match in (({**tokenizer.config, "image_size": 10**12}, "sizes up to"),
                          ({**tokenizer.config, "quantizer": {"kind": "os.system"}}, "import path|unknown")):
        torch.save({"tokenizer_config": config, "state_dict": state, "global_step": 1}, tmp_path / "x.ckpt")
        with pytest.raises(InvalidPretrainedError, match=match):
            load_tokenizer(tmp_path / "x.ckpt", weights="live")
    wrong_dtype = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"tokenizer_config": tokenizer.config, "state_dict": wrong_dtype, "global_step": 1},
               tmp_path / "y.ckpt")
    with pytest.raises(InvalidPretrainedError, match=r"torch\.int32"):
        load_tokenizer(tmp_path / "y.ckpt", weights="live")


# ------------------------------------------------------------------------------------------------ hostile data
def _encode(image, format_: str = "PNG", **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=format_, **kwargs)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (a decompression bomb's signature)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


def _hostile_samples() -> list[tuple[str, dict[str, bytes], str | None]]:
    """``(key, members, expected skip kind or None)`` for every case of the faults issue."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    jpeg = _encode(photo, "JPEG", quality=90)
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    sixteen = Image.new("I;16", (40, 40))
    sixteen.frombytes((np.arange(40 * 40, dtype="<u2") * 40).tobytes())
    return [
        ("good0", {"png": _encode(photo)}, None),
        ("good1", {"jpg": jpeg, "txt": b"a photo"}, None),
        ("truncated_jpeg", {"jpg": jpeg[: len(jpeg) // 2]}, "undecodable"),
        ("zero_bytes", {"png": b""}, "empty"),
        ("cmyk", {"jpg": _encode(photo.convert("CMYK"), "JPEG")}, None),
        ("png16", {"png": _encode(sixteen)}, None),
        ("grayscale", {"png": _encode(photo.convert("L"))}, None),
        ("rgba", {"png": _encode(rgba)}, None),
        ("palette", {"png": _encode(photo.convert("P"))}, None),
        ("one_pixel", {"png": _encode(Image.new("RGB", (1, 1)))}, "too_small"),
        ("bomb", {"png": _png_declaring(100_000, 100_000)}, "too_large"),
        ("not_an_image", {"png": b"this is not an image at all"}, "undecodable"),
        ("wrong_extension", {"jpg": _encode(photo)}, None),  # PNG bytes under .jpg: decoded by content
        ("caption_not_utf8", {"png": _encode(photo), "txt": b"caf\xe9 \xff\xfe"}, None),
        ("no_caption", {"png": _encode(photo)}, None),
        ("no_image", {"txt": b"a caption without its image"}, "no_image"),
    ]


@pytest.fixture
def hostile_shard(tmp_path) -> tuple[Path, list]:
    import webdataset as wds

    samples = _hostile_samples()
    path = tmp_path / "hostile-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for key, members, _ in samples:
            sink.write({"__key__": key, **members})
    return path, samples


def test_hostile_images_are_converted_or_skipped_and_counted_by_kind(hostile_shard, caplog):
    from vtok.data import ImageTransform, ShardDataset, decode_image

    path, samples = hostile_shard
    usable = {key for key, _, kind in samples if kind is None}
    expected = {}
    for _, _, kind in samples:
        if kind:
            expected[kind] = expected.get(kind, 0) + 1
    stream = ShardDataset(str(path), ImageTransform(size=32, mode="center"), resampled=False, shuffle_buffer=0,
                          captions=True)
    with caplog.at_level("WARNING"):
        out = list(stream)
    images = [s for s in out if "image" in s]
    assert {s["key"] for s in images} == usable
    assert all(s["image"].shape == (3, 32, 32) and torch.isfinite(s["image"]).all() for s in images)
    assert {k: v for k, v in stream.counts.items() if k in expected} == expected
    assert stream.counts["caption_not_utf8"] == 1 and stream.counts["no_caption"] >= 1
    caption = next(s["caption"] for s in images if s["key"] == "caption_not_utf8")
    assert caption.startswith("caf") and "\ufffd" in caption
    assert "too_large" in caplog.text and "too_small" in caplog.text  # each kind named in the log
    # modes are converted, not clipped: 16-bit values scale to 8 bits; transparency lands on white
    members = dict((key, m) for key, m, _ in samples)
    sixteen = decode_image(members["png16"]["png"])
    assert 100 < float(torch.tensor(list(sixteen.getdata())).float().mean()) < 155  # not ~255 (clipped)
    assert set(decode_image(members["rgba"]["png"]).getdata()) == {(255, 255, 255)}
    # the training stream (resampled) skips them too and never stops
    training = ShardDataset(str(path), ImageTransform(size=32), resampled=True, shuffle_buffer=4, captions=True)
    drawn = [s for _, s in zip(range(40), training)]
    assert len(drawn) == 40 and all("image" in s and s["key"] in usable for s in drawn)


@pytest.mark.parametrize("cut_in", ["member", "header_boundary"])
def test_a_damaged_shard_is_counted_never_cached_and_invalid_json_is_counted(tmp_path, caplog, cut_in):
    """A shard cut mid-member: the samples before the cut are used, the sample being read and the rest are one
    ``damaged_shard`` entry (evaluation reports it by kind), and a decode cache never keeps the shard as if it had
    been read whole.
    A ``json`` member that is not JSON is counted as ``json_invalid`` and the ``txt`` caption is used."""
    import webdataset as wds

    from vtok.data import ImageTransform, ShardDataset

    photo = _encode(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (40, 40), (200, 30, 30)))
    whole = tmp_path / "whole.tar"
    with wds.TarWriter(str(whole)) as sink:
        sink.write({"__key__": "bad_json", "png": photo, "json": b"{not json", "txt": b"a red square"})
        sink.write({"__key__": "list_json", "png": photo, "json": b"[1, 2]"})
        for i in range(4):
            sink.write({"__key__": f"s{i}", "png": photo, "txt": b"red"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    s2 = data.index(b"s2.png")  # its header: a cut there ends the file between members, one later cuts it
    cut.write_bytes(data[: s2 if cut_in == "header_boundary" else s2 + 512 + 50])

    stream = ShardDataset(str(cut), ImageTransform(size=32, mode="center"), resampled=False, shuffle_buffer=0,
                          captions=True, decode_cache=16)
    with caplog.at_level("WARNING"):
        first = list(stream)
    images = [s for s in first if "image" in s]
    # the sample being read when the file ended may have lost members: it goes with the rest
    assert [s["key"] for s in images] == ["bad_json", "list_json", "s0"]
    assert first[-1] == {"skipped": "damaged_shard", "key": str(cut)}
    assert stream.counts["damaged_shard"] == 1 and "cut short" in caplog.text and "damaged_shard" in caplog.text
    assert stream.counts["json_invalid"] == 2
    assert images[0]["caption"] == "a red square" and images[1]["caption"] == ""
    assert stream._small_shards == {}  # not cached: the next pass reads the file again
    cut.write_bytes(data)  # repaired on disk: the next pass sees every sample
    assert [s["key"] for s in stream if "image" in s] == ["bad_json", "list_json", "s0", "s1", "s2", "s3"]
    assert stream.counts["damaged_shard"] == 1 and str(cut) in stream._small_shards


@pytest.mark.slow
def test_evaluation_and_the_writer_count_the_same_hostile_set(hostile_shard, tmp_path):
    from vtok.data.shards import folder_items, write_shards

    path, samples = hostile_shard
    torch.manual_seed(0)
    Tokenizer(**tiny_tokenizer_config()).save_pretrained(str(tmp_path / "tok"))
    usable = sum(kind is None for _, _, kind in samples)
    skipped = {}
    for _, _, kind in samples:
        if kind:
            skipped[kind] = skipped.get(kind, 0) + 1
    common = [sys.executable, "-m", "vtok.eval", f"ckpt={tmp_path / 'tok'}", "eval.fid=false", "eval.lpips=false",
              "data.val_crop=full", "data.val_batch_size=1"]
    result = subprocess.run([*common, "data=webdataset", f"data.val.urls={path}", f"out={tmp_path / 'shards'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "shards/report.json").read_text())
    assert report["num_images"] == usable and report["skipped_samples"] == skipped
    # the same files in a folder (a folder has no image-less sample)
    folder = tmp_path / "folder"
    folder.mkdir()
    for key, members, _ in samples:
        for ext, data in members.items():
            (folder / f"{key}.{ext}").write_bytes(data)
    result = subprocess.run([*common, "data=folder", f"data.val.root={folder}", f"out={tmp_path / 'folder_out'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "folder_out/report.json").read_text())
    assert report["num_images"] == usable
    assert report["skipped_samples"] == {k: v for k, v in skipped.items() if k != "no_image"}
    items, _ = folder_items(folder)
    summary = write_shards(items, tmp_path / "rewritten", progress=False)
    assert summary.written == usable
    assert summary.skipped_kinds == {k: v for k, v in skipped.items() if k != "no_image"}
