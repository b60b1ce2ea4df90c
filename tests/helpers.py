"""Test helpers that configs can name (the test runs put tests/ on PYTHONPATH)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


class RecordRanks(L.Callback):
    """Writes, per rank, the keys of the samples it trained on and a hash of the tokenizer's weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.keys += list(batch["key"])

    def on_train_end(self, trainer, module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(module.tokenizer.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "keys": self.keys,
            "weights": digest.hexdigest(),
            "codebook": module.tokenizer.quantizer.codebook.detach().cpu().tolist(),
            "world_size": trainer.world_size,
            "step": trainer.global_step,
        }))


class StallRank(L.Callback):
    """Rank ``rank`` stops answering after step ``step`` (writes ``marker``, then sleeps): the other ranks wait for
    it inside their next collective, as they would for a rank stuck on a dead file system or a lost node."""

    def __init__(self, rank: int, step: int, marker: str) -> None:
        self.rank, self.step, self.marker = rank, step, Path(marker)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            import time

            self.marker.write_text("stalled")
            time.sleep(3600)


class RecordSplit(L.Callback):
    """Writes, per rank, its rank and world size as Lightning sees them and the keys of its validation images."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.val_keys: list[str] = []

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_keys += list(batch["key"])

    def on_train_end(self, trainer, module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "rank": trainer.global_rank, "world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
            "node_rank": trainer.node_rank, "val_keys": self.val_keys}))


class KillAtStep(L.Callback):
    """``kill -9`` of this process once step ``step`` has trained (before its checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class MarkStep(L.Callback):
    """Writes ``marker`` once step ``step`` has trained (then training goes on)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(self.step))
