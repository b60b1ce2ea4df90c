"""Learning-rate schedules as multipliers of the base rate (for ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def delayed_constant(step: int, start: int) -> float:
    """0 before ``start``, 1 from then on (the discriminator's schedule)."""
    return 0.0 if step < start else 1.0
