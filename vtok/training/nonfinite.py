"""Steps whose loss or gradient is NaN or infinite: skipped and undone, and after too many in a row, a clear stop.

A skipped step moves nothing: no optimiser update, no EMA update, and what the forward pass changed in place (the
codebook's EMA statistics, dead-code restarts, buffers of tokenizer and loss) is restored from a copy taken before
it. The step count and the data position still advance, so the run does not retry the same batch forever.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from vtok.distributed import all_reduce_sum

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive training steps had a NaN or infinite loss or gradient."""


class NonFiniteGuard:
    """Detects non-finite steps, undoes what their forward pass changed, and counts them.

    Args:
        max_in_a_row: after this many consecutive bad steps, :meth:`skip` raises; 0 turns the guard off.
    """

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.skipped = 0  # across resumes (restored from the checkpoint)
        self.in_a_row = 0

    @property
    def active(self) -> bool:
        return self.max_in_a_row > 0

    def snapshot(self, tokenizer: nn.Module, loss: nn.Module) -> dict[str, Tensor]:
        """Copies of what a forward pass changes in place: the bottleneck's state, buffers of tokenizer and loss."""
        return {k: v.detach().clone() for k, v in _in_forward_state(tokenizer, loss).items()}

    def is_bad(self, loss: Tensor, *norms: Tensor) -> bool:
        """Whether the loss or any gradient norm is non-finite on any rank (every rank skips the same steps)."""
        values = torch.stack([loss.detach().float(), *(n.detach().float().to(loss.device) for n in norms)])
        bad = (~torch.isfinite(values)).any().float().reshape(1)
        return bool(all_reduce_sum(bad).item())

    def good_step(self) -> None:
        self.in_a_row = 0

    def skip(self, optimizer: Any, scheduler: Any, tokenizer: nn.Module, loss: nn.Module,
             saved: dict[str, Tensor], step: int, last_checkpoint: str = "") -> None:
        """Undo a bad step: no parameter moves, the schedule advances, the in-place state is restored.

        Raises:
            NonFiniteTrainingError: this was the ``max_in_a_row``-th bad step in a row (names the last good
                checkpoint).
        """
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()  # no parameter has a gradient: nothing moves, only the step count advances
        scheduler.step()
        current = _in_forward_state(tokenizer, loss)
        with torch.no_grad():
            for name, value in saved.items():
                current[name].copy_(value)
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d: non-finite loss or gradient, step skipped (no optimiser, EMA or codebook update); "
                    "%d in a row, %d in this run", step, self.in_a_row, self.skipped)
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteTrainingError(
                f"{self.in_a_row} steps in a row (up to step {step}) had a non-finite loss or gradient: the run "
                f"diverged. The last good checkpoint is {last_checkpoint or 'not written yet'}; lower module.lr or "
                f"raise module.warmup_steps, then resume (module.max_bad_steps sets how many are tolerated)")


def _in_forward_state(tokenizer: nn.Module, loss: nn.Module) -> dict[str, Tensor]:
    state = {f"quantizer.{k}": v for k, v in tokenizer.quantizer.state_dict(keep_vars=True).items()}
    state.update({f"tokenizer.{k}": v for k, v in tokenizer.named_buffers()})
    state.update({f"loss.{k}": v for k, v in loss.named_buffers()})
    return state
