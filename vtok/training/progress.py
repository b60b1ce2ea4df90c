"""What a person watching a run sees: one progress line against the run's real end, and each log line once."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from tqdm import tqdm

from .module import TokenizerModule

log = logging.getLogger(__name__)

# Lightning's own notices that are advertisements, not information about the run.
_ADVERTISEMENTS = ("Tip: For seamless cloud",)


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _ADVERTISEMENTS)


def route_lightning_logs() -> None:
    """Print each of Lightning's log lines once, through the application's (Hydra's) handlers, without ads.

    Lightning adds its own terminal handler when it is imported before logging is configured, so every line
    came out twice (its copy and Hydra's).
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
            logger.addFilter(_DropAdvertisements())


class TrainingProgress(L.Callback):
    """One progress bar against what ends the run: the time budget (seconds of training) when one is set, else
    ``max_steps``; steps, loss, codebook usage and validation PSNR beside it.

    On a terminal it is a live bar; otherwise (a log file, CI) one status line every ``log_seconds``.

    Args:
        log_seconds: interval of the status lines when the output is not a terminal.
    """

    def __init__(self, log_seconds: float = 60.0) -> None:
        self.log_seconds = log_seconds
        self.bar: tqdm | None = None
        self._last_line = 0.0

    def _budget(self, module: TokenizerModule) -> float | None:
        return module.hparams.time_budget or None

    def on_train_start(self, trainer: L.Trainer, module: TokenizerModule) -> None:
        if not trainer.is_global_zero:
            return
        budget = self._budget(module)
        if sys.stderr.isatty():
            if budget:
                self.bar = tqdm(total=float(budget), desc="training", unit="s", dynamic_ncols=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of training "
                                           "[{elapsed}<{remaining}{postfix}]")
            else:
                self.bar = tqdm(total=trainer.max_steps, desc="training", unit="step", dynamic_ncols=True,
                                initial=trainer.global_step)
        self._last_line = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, module: TokenizerModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        status = self._status(trainer, module)
        if self.bar is not None:
            budget = self._budget(module)
            done = min(module.train_seconds, float(budget)) if budget else trainer.global_step
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(done - self.bar.n)
        elif time.monotonic() - self._last_line >= self.log_seconds:
            self._last_line = time.monotonic()
            log.info("%s", status)

    def _status(self, trainer: L.Trainer, module: TokenizerModule) -> str:
        parts = [f"step {trainer.global_step:,}"]
        budget = self._budget(module)
        if budget:
            parts.append(f"{max(0.0, budget - module.train_seconds):.0f} s left")
        else:
            parts.append(f"of {trainer.max_steps:,}")
        metrics = trainer.callback_metrics
        for key, label, fmt in (("loss", "loss", "{:.4f}"), ("usage", "usage", "{:.0%}"),
                                ("val/psnr", "val PSNR", "{:.2f} dB")):
            if key in metrics:
                parts.append(f"{label} {fmt.format(float(metrics[key]))}")
        return ", ".join(parts)

    def on_train_end(self, trainer: L.Trainer, module: TokenizerModule) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self._status(trainer, module))
            self.bar.close()
            self.bar = None
