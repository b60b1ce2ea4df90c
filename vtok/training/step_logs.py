"""What a training step hands to Lightning's loggers, and on which steps.

Each ``self.log`` costs about 2 ms of Lightning's bookkeeping whether or not a logger writes it (15 of them on
every step were 18% of the quick start's step), so metrics are handed over only on the steps the loggers write.
Code usage is counted on every step, over a window of recent batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vtok.distributed import all_reduce_sum
from vtok.quantizers.stats import UsageWindow, has_histogram, usage_and_perplexity


class StepLog:
    """Counts codes over a window of batches and assembles the ``train/*`` metrics of a logging step.

    Args:
        codebook_size: the tokenizer's vocabulary (``None`` for continuous tokenizers); codebooks too large for a
            histogram (big LFQ / BSQ) report their per-bit statistics instead.
        window: batches over which usage and perplexity are counted.
    """

    def __init__(self, codebook_size: int | None, window: int) -> None:
        self.usage = UsageWindow(codebook_size, window) if has_histogram(codebook_size) else None

    def count(self, indices: Tensor | None) -> None:
        """Add one batch's token ids (all ranks') to the window."""
        if self.usage is not None and indices is not None:
            counts = torch.bincount(indices.reshape(-1), minlength=self.usage.codebook_size)
            self.usage.update(all_reduce_sum(counts.float()))

    def metrics(self, logs: dict[str, Tensor], stats: dict[str, Tensor], images_per_second: float | None,
                lr: float) -> dict[str, Tensor]:
        """``train/*``: the loss parts, the bottleneck's statistics, usage and perplexity over the window, images
        per second (all ranks) and the learning rate."""
        metrics = {f"train/{k}": v for k, v in logs.items()}
        metrics.update({f"train/{k}": v for k, v in stats.items()})
        if self.usage is not None and self.usage.total is not None:
            usage, perplexity = usage_and_perplexity(self.usage.counts())
            metrics["train/codebook_usage"], metrics["train/codebook_perplexity"] = usage, perplexity
        if images_per_second is not None:
            metrics["train/images_per_second"] = torch.tensor(images_per_second)
        metrics["train/lr"] = torch.tensor(lr)
        return metrics


def logs_this_step(trainer: Any) -> bool:
    """Whether this step's metrics go to Lightning: every ``trainer.log_every_n_steps`` optimiser steps and the
    last one (always without a trainer)."""
    if trainer is None:
        return True
    step = trainer.global_step  # optimiser steps so far, this one included
    last = trainer.should_stop or (trainer.max_steps > 0 and step >= trainer.max_steps)
    return last or step % max(1, trainer.log_every_n_steps) == 0
