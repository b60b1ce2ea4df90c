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


def local_bytes(tensor) -> int:
    """Bytes this rank holds for ``tensor``: its local shard for an FSDP2 ``DTensor``, else the whole tensor."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


class RecordMemory(L.Callback):
    """Writes, per rank, after ``step`` steps, the bytes it holds for parameters, gradients, AdamW state and the
    EMA, split into the sharded tokenizer blocks and everything else (which stays whole on every rank)."""

    def __init__(self, out_dir: str, step: int = 2) -> None:
        self.out_dir, self.step = Path(out_dir), step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        from vtok.training.sharding import tokenizer_blocks

        in_blocks = {id(p) for block in tokenizer_blocks(module.tokenizer) for p in block.parameters()}
        optimizer = trainer.optimizers[0]
        record = {part: {"blocks": 0, "rest": 0} for part in ("parameters", "gradients", "optimizer", "ema")}
        whole = []
        for name, p in module.named_parameters():
            where = "blocks" if id(p) in in_blocks else "rest"
            record["parameters"][where] += local_bytes(p)
            if p.grad is not None:
                record["gradients"][where] += local_bytes(p.grad)
            record["optimizer"][where] += sum(local_bytes(v) for v in optimizer.state.get(p, {}).values()
                                              if hasattr(v, "numel") and v.numel() > 1)
            if where == "rest" and p.requires_grad:
                whole.append(name)
        if module.ema is not None:  # the EMA copy has the tokenizer's names; its blocks are the same ones
            blocks = tokenizer_blocks(module.tokenizer)
            prefixes = tuple(f"{name}." for name, m in module.tokenizer.named_modules() if any(m is b for b in blocks))
            for name, p in module.ema.model.named_parameters():
                record["ema"]["blocks" if name.startswith(prefixes) else "rest"] += local_bytes(p)
        record["whole_trainable"] = sorted({name.rsplit(".", 1)[0] for name in whole})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(key)).split()[1])


def reset_peak_rss() -> int:
    """Reset this process's peak resident memory (``VmHWM``) to its current one; returns that, in KiB. A
    process-wide high-water mark would otherwise keep whatever earlier tests or imports reached."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status_kib("VmRSS:")


def peak_rss_growth_mib(since_kib: int) -> float:
    """How far the peak resident memory rose above ``since_kib`` (from :func:`reset_peak_rss`), in MiB."""
    return (_status_kib("VmHWM:") - since_kib) / 1024


def peak_memory_growth_mib(setup: str, work: str, timeout: float = 300) -> float:
    """How far ``work`` raises a fresh Python process's resident memory, at its peak, above where it stood after
    ``setup`` (imports, inputs)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    script = (f"{setup}\nfrom tests.helpers import peak_rss_growth_mib, reset_peak_rss\nbefore = reset_peak_rss()\n"
              f"{work}\nprint('GROWTH_MIB', peak_rss_growth_mib(before))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                            timeout=timeout, env={**__import__("os").environ, "PYTHONPATH": f"{root}:{root / 'tests'}"})
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.rsplit("GROWTH_MIB", 1)[1])


def write_parquet_split(folder: Path, split: str, images: list[bytes], captions: list[list[str]] | None = None,
                        files: int = 1) -> list[Path]:
    """A split of a Hugging Face dataset as ``datasets`` writes it: ``folder/data/SPLIT-0000K-of-0000N.parquet``
    with an ``image`` column (``datasets.Image``: encoded bytes) and, given captions, a ``captions`` list column."""
    import datasets

    columns = {"image": [{"bytes": data, "path": None} for data in images]}
    features = {"image": datasets.Image()}
    if captions is not None:
        columns["captions"] = captions
        features["captions"] = datasets.List(datasets.Value("string"))
    table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = folder / "data" / f"{split}-{k:05d}-of-{files:05d}.parquet"
        table.shard(files, k, contiguous=True).to_parquet(str(path))
        paths.append(path)
    return paths
