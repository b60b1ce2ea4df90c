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
