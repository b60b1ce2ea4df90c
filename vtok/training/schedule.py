"""Learning-rate schedules as multipliers of the base rate (for ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1,
                  time_progress: float = 0.0) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``.

    ``time_progress`` (spent fraction of a time budget) moves the decay along when it is ahead of the steps,
    so a run stopped by a time limit ends annealed whatever the machine's speed.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, max((step - warmup_steps) / max(1, total_steps - warmup_steps), time_progress))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def delayed_constant(step: int, start: int) -> float:
    """0 before ``start``, 1 from then on (the discriminator's schedule)."""
    return 0.0 if step < start else 1.0
