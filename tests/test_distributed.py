"""Several processes as users start them: the README's DDP, torchrun, multi-node, SLURM and sweep commands, run
verbatim on 2 CPU processes (gloo), each under a timeout so that a hang fails the test instead of CI."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vtok.data.shards import write_shards

from .conftest import ROOT

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
DDP_WEBDATASET = ("python train.py experiment=vqgan_f16 scale=toy data=webdataset "
                  "\"data.train.urls='shards/train-{000000..000002}.tar'\" data.val.urls=shards/val-000000.tar "
                  "data.image_size=32 data.num_workers=2 trainer=ddp trainer.accelerator=cpu trainer.devices=2 "
                  "trainer.max_steps=12 trainer.val_check_interval=6 evaluate=true")
TORCHRUN_EVAL = ("torchrun --nproc_per_node 2 -m vtok.eval ckpt=outputs/vqgan_f16/checkpoints/last.ckpt data=folder "
                 "data.val.root=photos data.image_size=32 eval.fid=false eval.lpips=false")
TWO_NODES = [f"torchrun --nnodes 2 --node_rank {node} --nproc_per_node 1 --master_addr 127.0.0.1 --master_port 29531 "
             "train.py experiment=vqgan_f16 scale=toy data=synthetic trainer=ddp trainer.accelerator=cpu "
             "trainer.devices=1 trainer.num_nodes=2" for node in (0, 1)]
SWEEP = "python train.py -m experiment=vqgan_f16 scale=toy data=synthetic module.lr=1e-3,2e-3"
TIMEOUT = 300


def _argv(command: str) -> list[str]:
    """A README command as an argument list for this interpreter (``python`` and ``torchrun`` are this venv's)."""
    assert command in README, f"the README no longer shows {command!r}"
    argv = shlex.split(command)
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    raise ValueError(command)


def _env(**extra: str) -> dict[str, str]:
    path = f"{ROOT}{os.pathsep}{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONPATH": path, **extra}


def _png(rng: np.random.Generator, size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Iterator[Path]:
    """A user's folder: train.py and configs/ (links), 3 training shards of 8, 1 validation shard of 6, 5 photos."""
    root = tmp_path_factory.mktemp("user")
    for name in ("train.py", "configs"):
        (root / name).symlink_to(ROOT / name)
    rng = np.random.default_rng(0)
    write_shards([(f"t{i:03d}", _png(rng), "png", None) for i in range(24)], root / "shards", prefix="train",
                 maxcount=8, progress=False)
    write_shards([(f"v{i:03d}", _png(rng), "png", None) for i in range(6)], root / "shards", prefix="val",
                 progress=False)
    (root / "photos").mkdir()
    for i in range(5):
        (root / "photos" / f"p{i}.png").write_bytes(_png(rng, 40 + 8 * i))
    yield root
    shutil.rmtree(root, ignore_errors=True)  # checkpoints of a dozen runs: gigabytes


@pytest.fixture(scope="module")
def ddp_run(folder) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(DDP_WEBDATASET), cwd=folder, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_ddp_with_fewer_shards_than_readers_validates_and_evaluates_every_image_once(folder, ddp_run):
    assert ddp_run.returncode == 0, ddp_run.stderr[-4000:]
    log = ddp_run.stdout + ddp_run.stderr
    assert "3 shards for 2 rank(s) x 2 data worker(s) = 4 readers" in log  # the training warning, with numbers
    run_dir = folder / "outputs" / "vqgan_f16"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["num_images"] == 6  # one validation shard, 2 ranks: one rank had none, each image counted once
    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/psnr")]
    assert len(rows) == 2  # validations at steps 6 and 12
    assert all(float(row["val/images"]) == 6 for row in rows)
    # one run directory; Hydra's per-rank files do not collide
    assert [p.name for p in (folder / "outputs").iterdir()] == ["vqgan_f16"]


def test_torchrun_evaluation_counts_each_image_once(folder, ddp_run):
    assert ddp_run.returncode == 0, ddp_run.stderr[-4000:]
    result = subprocess.run(_argv(TORCHRUN_EVAL), cwd=folder, env=_env(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((folder / "outputs" / "vqgan_f16" / "eval" / "report.json").read_text())
    assert report["num_images"] == 5 and len(report["psnr_per_image"]) == 5


def test_two_nodes_with_torchrun(tmp_path):
    for name in ("train.py", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    nodes = [subprocess.Popen(_argv(command), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for command in TWO_NODES]
    outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    run_dir = tmp_path / "outputs" / "vqgan_f16"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    # every rank ran Hydra itself: its files are its own
    assert {p.name for p in run_dir.iterdir()} >= {".hydra", ".hydra_rank1", "train.log", "train_rank1.log"}


def test_srun_variables_give_ranks_and_split_the_validation_shards(folder, tmp_path):
    record = tmp_path / "record"
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vtok",
             "SLURM_CPUS_PER_TASK": "1"}
    command = [sys.executable, "train.py", f"paths.root_dir={tmp_path}", "experiment=vqgan_f16", "scale=toy",
               "data=webdataset", f"data.train.urls={folder}/shards/train-000000.tar",
               f"data.val.urls=['{folder}/shards/val-000000.tar','{folder}/shards/train-000001.tar']",
               "data.image_size=32", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.num_nodes=1", "+callbacks.record._target_=helpers.RecordSplit",
               f"+callbacks.record.out_dir={record}"]
    tasks = [subprocess.Popen(command, cwd=ROOT, env=_env(**slurm, SLURM_PROCID=str(task), SLURM_LOCALID=str(task)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for task in (0, 1)]
    outputs = [task.communicate(timeout=TIMEOUT) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["num_nodes"]) for r in ranks] == [(0, 2, 1), (1, 2, 1)]
    keys = [set(r["val_keys"]) for r in ranks]
    assert keys[0] and keys[1] and not keys[0] & keys[1]  # one validation shard each
    assert len(keys[0] | keys[1]) == 6 + 8


def test_sweep_jobs_get_their_own_run_directories(tmp_path):
    for name in ("train.py", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    result = subprocess.run(_argv(SWEEP), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    for job, lr in ((0, 1e-3), (1, 2e-3)):
        run_dir = tmp_path / "outputs" / "vqgan_f16" / str(job)
        checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
        assert checkpoint["hyper_parameters"]["lr"] == lr
        assert f"module.lr={lr}" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def _stalled_run(tmp_path: Path, *extra: str, pythonpath: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """A 2-rank run whose rank 1 stops answering after step 2: rank 0 then waits inside a collective.
    ``pythonpath``: a folder put first on every rank's path (a ``sitecustomize`` there runs at start-up)."""
    marker = tmp_path / "stalled"
    command = [sys.executable, "train.py", f"paths.root_dir={tmp_path}", "experiment=vqgan_f16", "scale=toy",
               "data=synthetic", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.max_steps=50", "+callbacks.stall._target_=helpers.StallRank", "+callbacks.stall.rank=1",
               "+callbacks.stall.step=2", f"+callbacks.stall.marker={marker}", *extra]
    env = _env()
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env['PYTHONPATH']}"
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the stall"
        time.sleep(0.5)
    time.sleep(3)  # rank 0 is now blocked in its next collective
    return process, marker


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_ends_every_rank_even_one_blocked_in_a_collective(tmp_path):
    process, _ = _stalled_run(tmp_path, "exit_grace_s=5")
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)  # as `timeout`, `scancel` or a pre-empting scheduler would
    try:
        process.communicate(timeout=60)
        while _group_alive(process.pid) and time.monotonic() - start < 60:
            time.sleep(0.5)
        assert not _group_alive(process.pid), "a rank outlived SIGTERM"
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert time.monotonic() - start < 60


def test_a_collective_that_waits_too_long_ends_the_run_however_late_a_rank_started(tmp_path):
    """A 10 s collective timeout, and rank 1 starts 15 s after rank 0: the rendezvous waits for it on its own
    limit (``trainer.strategy.rendezvous_timeout``), training reaches the stall, and the stalled collective then
    ends the run with a timeout."""
    late = tmp_path / "late_start"
    late.mkdir()
    (late / "sitecustomize.py").write_text(  # Lightning starts rank 1 with LOCAL_RANK=1; rank 0 has none
        "import os, time\nif os.environ.get('LOCAL_RANK') == '1':\n    time.sleep(15)\n")
    process, _ = _stalled_run(tmp_path, "trainer.strategy.timeout.minutes=0", "+trainer.strategy.timeout.seconds=10",
                              pythonpath=late)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "clients joined" not in stderr and "rendezvous" not in stderr.lower(), stderr[-3000:]
    assert "timed out" in stderr.lower() or "timeout" in stderr.lower(), stderr[-3000:]


FSDP = ("python train.py experiment=titok_s128 scale=toy data=synthetic trainer=fsdp trainer.accelerator=cpu "
        "trainer.devices=2")
FSDP_ETT = ("python train.py experiment=ett_e2e scale=toy data=synthetic trainer=fsdp trainer.accelerator=cpu "
            "trainer.devices=2 loss.terms.caption.llm.train=lora")


def _run_in(folder: Path, command: str, *extra: str, readme: bool = True) -> subprocess.CompletedProcess:
    argv = _argv(command) if readme else [sys.executable, *shlex.split(command)[1:]]
    result = subprocess.run([*argv, *extra], cwd=folder, env=_env(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _metrics(run_dir: Path) -> dict[int, float]:
    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as f:
        return {int(r["step"]): float(r["train/total"]) for r in csv.DictReader(f) if r.get("train/total")}


@pytest.fixture(scope="module")
def fsdp_folder(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fsdp")
    for name in ("train.py", "configs"):
        (root / name).symlink_to(ROOT / name)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_fsdp_shards_blocks_trains_like_ddp_and_resumes_exactly(fsdp_folder):
    steps = ["trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2"]
    sharded = _run_in(fsdp_folder, FSDP, "run_name=fsdp", *steps)
    assert "blocks sharded over 2 ranks" in sharded.stdout + sharded.stderr
    _run_in(fsdp_folder, FSDP.replace("trainer=fsdp", "trainer=ddp"), "run_name=ddp", *steps, readme=False)
    outputs = fsdp_folder / "outputs"
    fsdp, ddp = _metrics(outputs / "fsdp"), _metrics(outputs / "ddp")
    assert sorted(fsdp) == [0, 1, 2, 3]
    assert fsdp == pytest.approx(ddp, rel=1e-5)  # the same maths, reduced in another order
    a = torch.load(outputs / "fsdp/checkpoints/step0000004.ckpt", weights_only=False)
    b = torch.load(outputs / "ddp/checkpoints/step0000004.ckpt", weights_only=False)
    assert a["state_dict"].keys() == b["state_dict"].keys()  # one ordinary checkpoint, gathered whole
    for key, value in b["state_dict"].items():
        assert a["state_dict"][key].shape == value.shape
        assert torch.allclose(a["state_dict"][key].float(), value.float(), atol=1e-3), key
    # resumed from step 2 under FSDP: the step-4 checkpoint is the uninterrupted run's, bit for bit
    _run_in(fsdp_folder, FSDP, "run_name=resumed", *steps, f"ckpt_path={outputs}/fsdp/checkpoints/step0000002.ckpt")
    c = torch.load(outputs / "resumed/checkpoints/step0000004.ckpt", weights_only=False)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, c["state_dict"][key]), key
    for key, value in a["ema"]["weights"].items():
        assert torch.equal(value, c["ema"]["weights"][key]), key
    assert a["ema"]["updates"] == c["ema"]["updates"] == 4


def _memory(folder: Path, strategy: str, *extra: str) -> list[dict]:
    out = folder / "memory" / strategy
    command = FSDP if strategy == "fsdp" else FSDP.replace("trainer=fsdp", "trainer=ddp")
    _run_in(folder, command, f"run_name=memory_{strategy}", "trainer.max_steps=2", "trainer.val_check_interval=100",
            "+callbacks.memory._target_=helpers.RecordMemory", f"+callbacks.memory.out_dir={out}", *extra,
            readme=strategy == "fsdp")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_fsdp_holds_half_of_every_sharded_block_per_rank_against_ddp(fsdp_folder):
    """Measured, not logged: after two steps on 2 CPU ranks, the bytes each rank holds for the tokenizer blocks'
    parameters, gradients, AdamW state and EMA are about half of DDP's, and everything else is the same on both
    (the parts that stay whole: stems, heads, bottleneck, named in the record)."""
    fsdp, ddp = _memory(fsdp_folder, "fsdp"), _memory(fsdp_folder, "ddp")
    for rank in (0, 1):
        for part in ("parameters", "gradients", "optimizer", "ema"):
            sharded, whole = fsdp[rank][part], ddp[rank][part]
            assert whole["blocks"] > 0, (part, whole)
            assert sharded["blocks"] == pytest.approx(whole["blocks"] / 2, rel=0.05), (rank, part, sharded, whole)
            assert sharded["rest"] == whole["rest"], (rank, part, sharded, whole)
    assert fsdp[0]["whole_trainable"] == ddp[0]["whole_trainable"]
    assert any("quantizer" in name for name in fsdp[0]["whole_trainable"])


def test_fsdp_checkpoint_exports_and_evaluates_like_any_other(fsdp_folder):
    from vtok import Tokenizer

    checkpoint = fsdp_folder / "outputs/fsdp/checkpoints/last.ckpt"
    if not checkpoint.is_file():
        _run_in(fsdp_folder, FSDP, "run_name=fsdp")
    export = subprocess.run([sys.executable, "-m", "vtok.hub", f"ckpt={checkpoint}", f"out={fsdp_folder / 'exported'}"],
                            cwd=fsdp_folder, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert export.returncode == 0, export.stderr[-3000:]
    tokenizer = Tokenizer.from_pretrained(str(fsdp_folder / "exported"))
    ema = torch.load(checkpoint, weights_only=False)["ema"]["weights"]
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(value, ema[key]), key
    result = subprocess.run([sys.executable, "-m", "vtok.eval", f"ckpt={checkpoint}", "data=synthetic",
                             "eval.fid=false", "eval.lpips=false"], cwd=fsdp_folder, env=_env(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((checkpoint.parent.parent / "eval" / "report.json").read_text())["num_images"] == 16


def test_fsdp_ett_shards_the_llm_layers_and_exports_the_bridge(fsdp_folder):
    from vtok.llm.export import load_bridge

    result = _run_in(fsdp_folder, FSDP_ETT, "run_name=ett")
    # toy conv tokenizer: 12 residual/attention blocks; toy Llama: 2 decoder layers
    assert "14 blocks sharded over 2 ranks" in result.stdout + result.stderr
    checkpoint = fsdp_folder / "outputs/ett/checkpoints/last.ckpt"
    export = subprocess.run([sys.executable, "-m", "vtok.hub", f"ckpt={checkpoint}", f"out={fsdp_folder / 'ett_out'}"],
                            cwd=fsdp_folder, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert export.returncode == 0, export.stderr[-3000:]
    bridge, _record = load_bridge(fsdp_folder / "ett_out" / "llm_bridge")
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    projector = {k.split("projector.", 1)[1]: v for k, v in state.items() if ".bridge.projector." in k}
    for key, value in bridge.projector.state_dict().items():
        assert torch.equal(value, projector[key]), key


def test_the_flow_decoder_trains_on_two_ranks_under_fsdp_as_under_ddp(fsdp_folder):
    """The generative decoder's adaLN blocks shard like any block; its random times and noise are drawn per rank
    from the run's seeded RNG, so FSDP and DDP compute the same losses."""
    flow = FSDP.replace("experiment=titok_s128", "experiment=flextok_fsq")
    steps = ["trainer.max_steps=3"]
    sharded = _run_in(fsdp_folder, flow, "run_name=flow_fsdp", *steps, readme=False)
    assert "blocks sharded over 2 ranks" in sharded.stdout + sharded.stderr
    _run_in(fsdp_folder, flow.replace("trainer=fsdp", "trainer=ddp"), "run_name=flow_ddp", *steps, readme=False)
    fsdp, ddp = _metrics(fsdp_folder / "outputs/flow_fsdp"), _metrics(fsdp_folder / "outputs/flow_ddp")
    assert sorted(fsdp) == [0, 1, 2]
    assert fsdp == pytest.approx(ddp, rel=1e-4)


@pytest.mark.parametrize("preset", ["seed", "lavit", "slot_mllm", "llm_vocabulary"])
def test_the_llm_token_presets_train_on_two_ranks(fsdp_folder, preset):
    """SEED's causal tokens (contrastive negatives gathered over ranks) and the vocabulary bridge (a frozen LLM
    never in DDP's buckets; only its new rows are) train 2 steps under DDP at toy size, offline."""
    command = (f"python train.py experiment={preset} scale=toy data=synthetic trainer=ddp trainer.accelerator=cpu "
               "trainer.devices=2 trainer.max_steps=2")
    _run_in(fsdp_folder, command, f"run_name={preset}_ddp", readme=False)
    assert sorted(_metrics(fsdp_folder / f"outputs/{preset}_ddp")) == [0, 1]
