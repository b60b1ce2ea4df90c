"""Two CPU processes (gloo) under Lightning DDP, launched through `train.py` as a user would."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT, TOY


@pytest.mark.slow
def test_ddp_two_processes_read_different_data_and_keep_identical_codebooks(tmp_path):
    record = tmp_path / "ranks"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable, "train.py", f"paths.root_dir={tmp_path}", "run_name=ddp", "data=synthetic",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=8",
        "trainer.val_check_interval=4", "loss=pixel", *TOY,
        "model.encoder.attention=false", "model.encoder.out_dim=16", "quantizer.codebook_size=64",
        "quantizer.restart_threshold=0.5", "quantizer.restart_decay=0.5", "module.warmup_steps=2",
        "+callbacks.record._target_=helpers.RecordRanks", f"+callbacks.record.out_dir={record}",
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == 8 for r in ranks)
    assert ranks[0]["keys"] != ranks[1]["keys"], "both ranks trained on the same samples"
    assert ranks[0]["codebook"] == ranks[1]["codebook"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # one run directory, not one per rank
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["ddp"]
