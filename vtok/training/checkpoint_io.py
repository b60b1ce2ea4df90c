"""Checkpoint files written atomically, read through :func:`vtok.checkpoint.read_checkpoint` (Lightning's resume
too), and chosen for resume among the good ones.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over the target: a
process killed during a save (pre-emption, ``kill -9``) or a disk that fills up leaves the previous file as it was,
and a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vtok.checkpoint import UnreadableCheckpointError, read_checkpoint

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous file at that path is unchanged."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder, flushed and renamed into place.

    Raises:
        CheckpointWriteError: the write failed (e.g. ``ENOSPC``); nothing half-written is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        reason = "the disk is full" if error.errno == errno.ENOSPC else error.strerror or str(error)
        raise CheckpointWriteError(
            error.errno, f"could not write checkpoint {path}: {reason}. The previous checkpoint at that path (if any) "
            f"is unchanged; free space or point paths.output_dir elsewhere, then resume=auto") from error
    with contextlib.suppress(OSError):  # the rename itself reaches the disk
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with :func:`atomic_torch_save` for local paths, and reads through vtok's one
    reader (``weights_only=True``, a damaged file named); remote URLs as Lightning does."""

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_checkpoint(path).raw

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
        return None


def newest_good_checkpoint(folder: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The checkpoint in ``folder`` to resume from: ``last.ckpt`` when readable, else the readable one with the
    highest step. Returns ``(path or None, [reasons the skipped files were skipped])``."""
    folder = Path(folder)
    candidates = [folder / "last.ckpt"] if (folder / "last.ckpt").is_file() else []
    others = [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]
    skipped: list[str] = []
    steps: list[tuple[int, Path]] = []
    for path in candidates + others:
        try:
            step = read_checkpoint(path).step
        except (UnreadableCheckpointError, FileNotFoundError) as error:
            skipped.append(str(error))
            continue
        if path.name == "last.ckpt":
            return path, skipped
        steps.append((step, path))
    return (max(steps)[1] if steps else None), skipped
