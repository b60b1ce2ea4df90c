"""Seconds spent in training steps, the clock a ``time_budget`` schedule reads.

Only the time between consecutive training steps counts (validation and checkpointing happen outside them), and
the total survives resumes through the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TrainingClock:
    """Counts wall time spent in training steps.

    Args:
        budget: seconds of training after which the run is over (``None``: no budget).
    """

    def __init__(self, budget: float | None = None) -> None:
        self.budget = budget
        self.seconds = 0.0
        self._last: float | None = None

    def start(self) -> None:
        """Mark the start of training (the first step's time counts from here)."""
        self._last = time.perf_counter()

    def tick(self, agree: Callable[[float], float] | None = None) -> float | None:
        """End of a step: add the time since the previous one; returns it (``None`` before :meth:`start`).

        Args:
            agree: makes every rank use the same total (rank 0's, broadcast): the schedule reads the clock, and
                ranks reading their own would drift apart in learning rate.
        """
        now = time.perf_counter()
        elapsed = None if self._last is None else now - self._last
        self._last = now
        if elapsed is not None:
            self.seconds += elapsed
            if agree is not None:
                self.seconds = agree(self.seconds)
        return elapsed

    @property
    def progress(self) -> float:
        """Share of the budget spent (0 without a budget)."""
        return self.seconds / self.budget if self.budget else 0.0

    @property
    def spent(self) -> bool:
        """Whether the budget is used up."""
        return bool(self.budget) and self.seconds >= self.budget
