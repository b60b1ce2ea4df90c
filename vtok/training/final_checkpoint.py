"""The state a run ends with is always in ``last.ckpt``, whatever ended it.

Periodic checkpoints come every ``every_n_train_steps``; a run stopped between two of them (by ``max_steps`` that is
not a multiple, ``module.time_budget``, ``trainer.max_time``, or SIGTERM from a scheduler) would otherwise leave
``last.ckpt`` behind the weights it evaluated and exported, and ``resume=auto`` would train those steps again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class FinalCheckpoint(L.Callback):
    """At the end of training (and on a SIGTERM stop, which Lightning turns into the same step on every rank),
    write ``last.ckpt`` in the checkpoint folder unless it already holds the final step."""

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._save(trainer, "end of training")

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # a clean stop between steps, agreed by every rank
            self._save(trainer, "SIGTERM")

    @staticmethod
    def _save(trainer: L.Trainer, why: str) -> None:
        checkpointing = trainer.checkpoint_callback
        if not isinstance(checkpointing, ModelCheckpoint) or checkpointing.dirpath is None or not trainer.global_step:
            return
        saved: Any = getattr(checkpointing, "_last_global_step_saved", None)
        last = Path(checkpointing.dirpath) / "last.ckpt"
        if saved == trainer.global_step and last.is_file():
            return
        # every rank calls it (sharded states are gathered); rank 0 writes; a whole state (optimiser too) for resume
        trainer.save_checkpoint(last, weights_only=False)
        checkpointing.last_model_path = str(last)
        log.info("%s: wrote %s at step %d", why, last, trainer.global_step)
