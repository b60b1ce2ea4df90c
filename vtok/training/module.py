"""The Lightning module that trains any :class:`~vtok.tokenizers.Tokenizer`.

One optimiser holds two parameter groups (tokenizer, discriminator) and each step does one backward pass of
``generator_loss + discriminator_loss``: the generator's adversarial term reads the discriminator through
detached weights and the discriminator's term reads a detached reconstruction, so each group receives only
its own gradient. One ``optimizer.step()`` per batch keeps ``trainer.global_step`` equal to the batch count
(with two optimisers Lightning counts both) and DDP sees one backward per forward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from vtok.losses import TokenizerLoss
from vtok.tokenizers import Tokenizer

from .clock import TrainingClock
from .ema import EMA
from .nonfinite import NonFiniteGuard, NonFiniteTrainingError
from .optim import build_optimizer
from .rng_state import capture_rng, restore_rng
from .schedule import warmup_cosine
from .sharding import clip_gradients, shard_for_fsdp
from .step_logs import StepLog, logs_this_step
from .validation import HeldOutPSNR

__all__ = ["NonFiniteTrainingError", "TokenizerModule"]

log = logging.getLogger(__name__)


class TokenizerModule(HeldOutPSNR, L.LightningModule):
    """Trains ``tokenizer`` against ``loss``.

    Args:
        tokenizer: the model being trained.
        loss: reconstruction/perceptual/GAN objective (owns the discriminator).
        lr: peak learning rate of the tokenizer.
        disc_lr: learning rate of the discriminator (defaults to ``lr``).
        betas, weight_decay: AdamW settings (no decay on biases, norms and codebooks).
        warmup_steps, min_lr_ratio: warm-up then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``.
        total_steps: length of the cosine schedule (usually ``trainer.max_steps``).
        time_budget: seconds of training steps (validation and checkpointing not counted) after which the
            cosine has fully decayed and training stops, whichever of steps and time comes first, so a
            time-limited run ends annealed on any machine; ``None`` schedules by steps only (reproducible step
            for step).
        grad_clip: max gradient norm, applied to tokenizer and discriminator separately; 0 disables.
        ema_decay: decay of the weight EMA; ``None`` or 0 disables it.
        usage_window: batches over which codebook usage is counted for logging.
        freeze_tokenizer: keep the tokenizer exactly as it is (no gradient, no codebook or EMA update, eval mode
            in every step): for stages that train only what reads its tokens (an LLM's projector).
        freeze: tokenizer parts (``encoder``, ``quantizer``, ``expander``, ``decoder``) kept exactly as they are the
            same way while the rest trains: ``[encoder, quantizer]`` fine-tunes a decoder (SD's ft-MSE VAE).
        max_bad_steps: a step whose loss or gradient is NaN or infinite is skipped (no optimiser, EMA or codebook
            update; counted as ``train/skipped_steps``); after this many in a row the run stops with an error
            naming the step and the last good checkpoint. 0 turns the check off.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        loss: TokenizerLoss,
        lr: float = 1e-4,
        disc_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        total_steps: int = 100_000,
        time_budget: float | None = None,
        grad_clip: float = 1.0,
        ema_decay: float | None = 0.999,
        usage_window: int = 100,
        freeze_tokenizer: bool = False,
        max_bad_steps: int = 20,
        freeze: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer", "loss"])
        self.automatic_optimization = False
        self.tokenizer, self.loss = tokenizer, loss
        loss.bind(tokenizer)  # size the semantic terms' heads now, so the optimiser and checkpoints see them
        self.freeze_tokenizer = freeze_tokenizer
        self.frozen_parts = [_part(tokenizer, name) for name in freeze]
        for part in self.frozen_parts:
            part.requires_grad_(False)
        if freeze_tokenizer:
            tokenizer.requires_grad_(False)
            ema_decay = None  # the weights do not move: no average to keep
        self.ema = EMA(tokenizer, ema_decay) if ema_decay else None
        self.step_log = StepLog(tokenizer.vocab_size, usage_window)
        self.clock = TrainingClock(time_budget)
        self.guard = NonFiniteGuard(max_bad_steps)
        self.sharded = False  # trainer=fsdp: blocks sharded in configure_model
        self._pending_rng: dict[str, Any] | None = None

    @property
    def train_seconds(self) -> float:
        """Wall time spent in training steps, across resumes."""
        return self.clock.seconds

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient, across resumes."""
        return self.guard.skipped

    # ----------------------------------------------------------------------------------------------- setup
    def configure_optimizers(self):
        h = self.hparams
        return build_optimizer(self.tokenizer, self.loss, h.lr, h.disc_lr, h.betas, h.weight_decay,
                               lambda step: warmup_cosine(step, h.warmup_steps, h.total_steps, h.min_lr_ratio,
                                                          self.clock.progress),
                               fused=not self.sharded)

    def configure_model(self) -> None:
        # Lightning calls this under every strategy, before the optimiser exists; only trainer=fsdp shards.
        if self.device_mesh is not None and not self.sharded:
            shard_for_fsdp(self.tokenizer, self.loss, self.ema, self.device_mesh["data_parallel"], self.parameters())
            self.sharded = True

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def on_train_start(self) -> None:
        self.clock.start()

    def text_for(self, batch: dict[str, Any], for_loss: bool = True) -> Tensor | None:
        """The batch's caption embeddings when the loss terms (``for_loss``) or the tokenizer read them."""
        return self.loss.batch_text(batch, self.tokenizer.condition_dim is not None, for_loss)

    # ------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self._pending_rng is not None:  # resumed: continue exactly where the saved run's RNG stood
            restore_rng(self._pending_rng)
            self._pending_rng = None
        images, step = batch["image"], self.global_step
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        saved = self.guard.snapshot(self.tokenizer, self.loss) if self.guard.active else {}

        text = self.text_for(batch)
        for part in [self.tokenizer] if self.freeze_tokenizer else self.frozen_parts:
            part.eval()  # no dropout, no codebook statistics or restarts
        with torch.set_grad_enabled(not self.freeze_tokenizer):
            output = self.tokenizer(images, features=self.loss.feature_names,
                                    text=text if self.tokenizer.condition_dim is not None else None)
        if self.loss.needs_captions and batch.get("caption") is None:
            raise ValueError("this run's loss reads captions, but the batch has none: use captioned data")
        loss, logs = self.loss.generator_loss(images, output, step, self.tokenizer.last_layer, text=text,
                                              captions=batch.get("caption") if self.loss.needs_captions else None,
                                              prompts=batch.get("prompt"), tokenizer=self.tokenizer)
        if self.loss.discriminator is not None:
            d_loss, d_logs = self.loss.discriminator_loss(images, output.reconstruction, step)
            loss, logs = loss + d_loss, {**logs, **d_logs}

        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        norms = clip_gradients(self.tokenizer, self.loss, optimizer, self.hparams.grad_clip, self.sharded)
        logs["grad_norm"] = norms[0]
        if self.guard.active and self.guard.is_bad(loss, *norms):
            self.guard.skip(optimizer, scheduler, self.tokenizer, self.loss, saved, step, self._last_checkpoint())
            self.log("train/skipped_steps", float(self.guard.skipped), on_step=True, on_epoch=False)
            return loss.detach()
        self.guard.good_step()
        optimizer.step()
        scheduler.step()
        if self.ema is not None:
            self.ema.update(self.tokenizer)
        self._after_step(images, output, logs)
        return loss.detach()

    def _after_step(self, images: Tensor, output, logs: dict[str, Tensor]) -> None:
        """Count codes, advance the clock (rank 0's on every rank under a time budget), log on logging steps."""
        self.step_log.count(output.tokens.indices)
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        agree = (lambda s: float(trainer.strategy.broadcast(s, src=0))) if world > 1 and self.clock.budget else None
        elapsed = self.clock.tick(agree)
        if trainer is not None and self.clock.spent:
            trainer.should_stop = True  # the schedule has ended
        if not logs_this_step(trainer):
            return
        metrics = self.step_log.metrics(logs, output.stats, images.shape[0] * world / elapsed if elapsed else None,
                                        self.lr_schedulers().get_last_lr()[0])
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("loss", metrics["train/total"], prog_bar=True, on_step=True, logger=False)
        if "train/codebook_usage" in metrics:
            self.log("usage", metrics["train/codebook_usage"], prog_bar=True, on_step=True, logger=False)

    def _last_checkpoint(self) -> str:
        callback = self._trainer.checkpoint_callback if self._trainer is not None else None
        return callback.last_model_path if callback is not None else ""

    # ----------------------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer_config"] = self.tokenizer.config
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        checkpoint["rng"] = capture_rng()
        records = {name: term.checkpoint_record() for name, term in self.loss.terms.items()}
        checkpoint["loss_terms"] = {name: record for name, record in records.items() if record is not None}
        checkpoint["train_seconds"] = self.clock.seconds
        checkpoint["skipped_steps"] = self.guard.skipped

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        self._pending_rng = checkpoint.get("rng")
        self.clock.seconds = checkpoint.get("train_seconds", 0.0)
        self.guard.skipped = checkpoint.get("skipped_steps", 0)


def _part(tokenizer: Tokenizer, name: str) -> torch.nn.Module:
    parts = [n for n, _ in tokenizer.named_children()]
    if name not in parts:
        raise ValueError(f"module.freeze: {name!r} is not a part of this tokenizer; it has {parts}")
    return getattr(tokenizer, name)
