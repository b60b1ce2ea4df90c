"""The Lightning module that trains any :class:`~vtok.tokenizers.Tokenizer`.

One optimiser holds two parameter groups (tokenizer, discriminator) and each step does one backward pass of
``generator_loss + discriminator_loss``: the generator's adversarial term reads the discriminator through
detached weights and the discriminator's term reads a detached reconstruction, so each group receives only
its own gradient. One ``optimizer.step()`` per batch keeps ``trainer.global_step`` equal to the batch count
(with two optimisers Lightning counts both) and DDP sees one backward per forward.
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from vtok.distributed import all_reduce_sum, local_only
from vtok.images import psnr
from vtok.losses import TokenizerLoss
from vtok.quantizers.stats import UsageWindow, has_histogram, usage_and_perplexity
from vtok.tokenizers import Tokenizer

from .ema import EMA
from .schedule import delayed_constant, warmup_cosine
from .sharding import average_replicated_gradients, clip_grad_norm, full_state_dict, shard_blocks, tokenizer_blocks

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive training steps had a NaN or infinite loss or gradient."""


class TokenizerModule(L.LightningModule):
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer", "loss"])
        self.automatic_optimization = False
        self.tokenizer = tokenizer
        self.loss = loss
        loss.bind(tokenizer)  # size the semantic terms' heads now, so the optimiser and checkpoints see them
        self.freeze_tokenizer = freeze_tokenizer
        if freeze_tokenizer:
            tokenizer.requires_grad_(False)
            ema_decay = None  # the weights do not move: no average to keep
        self.ema = EMA(tokenizer, ema_decay) if ema_decay else None
        size = tokenizer.vocab_size
        # Usage over a window of batches, for codebooks with a histogram (larger LFQ/BSQ report per-bit stats).
        self.usage = UsageWindow(size, usage_window) if has_histogram(size) else None
        self._sharded = False  # trainer=fsdp: blocks sharded in configure_model
        self._val_tokenizer: Tokenizer | None = None
        self._last_step_time: float | None = None
        self._pending_rng: dict[str, Any] | None = None
        self.train_seconds = 0.0  # wall time spent in training steps, across resumes
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient, across resumes
        self._bad_in_a_row = 0

    # ----------------------------------------------------------------------------------------------- setup
    def configure_optimizers(self):
        h = self.hparams
        decay, no_decay = [], []
        for name, p in self.tokenizer.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 and "codebook" not in name else no_decay).append(p)
        groups = [group for group in ({"params": decay, "weight_decay": h.weight_decay, "lr": h.lr},
                                      {"params": no_decay, "weight_decay": 0.0, "lr": h.lr}) if group["params"]]
        # the loss terms' heads (and an LLM's weights) learn on the tokenizer's schedule, at their own rates
        groups += self.loss.param_groups(h.lr)
        lambdas = [self._tokenizer_lr_factor] * len(groups)
        if self.loss.discriminator is not None:
            groups.append({"params": list(self.loss.discriminator.parameters()), "weight_decay": 0.0,
                           "lr": h.disc_lr or h.lr})
            lambdas.append(partial(delayed_constant, start=self.loss.disc_start))
        # One fused kernel for all tensors (CPU and CUDA): the per-tensor loop cost ~9 ms a step for the quick
        # start's 124 small tensors, the fused update 2.5 ms. FSDP's sharded tensors take the default path.
        optimizer = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas), fused=not self._sharded)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _tokenizer_lr_factor(self, step: int) -> float:
        h = self.hparams
        time_progress = self.train_seconds / h.time_budget if h.time_budget else 0.0
        return warmup_cosine(step, h.warmup_steps, h.total_steps, h.min_lr_ratio, time_progress)

    def configure_model(self) -> None:
        # Lightning calls this under every strategy, before the optimiser exists; only trainer=fsdp shards.
        if self.device_mesh is None or self._sharded:
            return
        mesh = self.device_mesh["data_parallel"]
        blocks = [*tokenizer_blocks(self.tokenizer), *self.loss.shardable_modules()]
        shard_blocks(blocks, mesh)
        sharded = sum(p.numel() for block in blocks for p in block.parameters())  # whole sizes (DTensor numel)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        log.info("trainer=fsdp: %d blocks sharded over %d ranks, %.2f M of %.2f M trainable parameters (the rest "
                 "stays whole on every rank)", len(blocks), mesh.size(), sharded / 1e6, trainable / 1e6)
        if self.ema is not None:
            self.ema.shard_like(self.tokenizer)
        self._sharded = True

    @property
    def sharded(self) -> bool:
        """Whether blocks are sharded over ranks (``trainer=fsdp``)."""
        return self._sharded

    def full_eval_tokenizer(self) -> Tokenizer:
        """The weights evaluation uses (the EMA when kept) as one whole model. Under ``trainer=fsdp`` the shards are
        gathered into a fresh copy: a collective, so every rank calls it."""
        if not self._sharded:
            return self.eval_tokenizer
        whole = Tokenizer(**self.tokenizer.config).to(self.device)
        whole.load_state_dict(full_state_dict(self.eval_tokenizer))
        return whole.eval().requires_grad_(False)

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def on_train_start(self) -> None:
        self._last_step_time = time.perf_counter()

    def text_for(self, batch: dict[str, Any], for_loss: bool = True) -> Tensor | None:
        """The batch's caption embeddings when the loss terms (``for_loss``) or a caption-conditioned tokenizer
        read them, else ``None``.

        Raises:
            ValueError: they are needed and the batch has no ``caption``.
        """
        needed = self.tokenizer.condition_dim is not None or (for_loss and self.loss.needs_text)
        if not needed:
            return None
        if "caption" not in batch:
            raise ValueError("this run reads captions (a text loss term or a caption-conditioned tokenizer), but "
                             "the batch has none: use captioned data (e.g. data.train.captions=true)")
        return self.loss.encode_text(batch["caption"])

    @property
    def eval_tokenizer(self) -> Tokenizer:
        """The EMA weights when kept, else the live weights."""
        return self.ema.model if self.ema is not None else self.tokenizer

    # ------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self._pending_rng is not None:  # resumed: continue exactly where the saved run's RNG stood
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
        images = batch["image"]
        step = self.global_step
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()

        text = self.text_for(batch)
        condition = text if self.tokenizer.condition_dim is not None else None
        state_before = self._in_forward_state() if self.hparams.max_bad_steps else {}
        if self.freeze_tokenizer:
            self.tokenizer.eval()
            with torch.no_grad():
                output = self.tokenizer(images, features=self.loss.feature_names, text=condition)
        else:
            output = self.tokenizer(images, features=self.loss.feature_names, text=condition)
        captions = batch.get("caption") if self.loss.needs_captions else None
        if self.loss.needs_captions and captions is None:
            raise ValueError("this run's loss reads captions, but the batch has none: use captioned data")
        loss, logs = self.loss.generator_loss(images, output, step, self.tokenizer.last_layer, text=text,
                                              captions=captions, prompts=batch.get("prompt"),
                                              tokenizer=self.tokenizer)
        if self.loss.discriminator is not None:
            d_loss, d_logs = self.loss.discriminator_loss(images, output.reconstruction, step)
            loss, logs = loss + d_loss, {**logs, **d_logs}

        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self._sharded:  # FSDP reduced the blocks' gradients; the whole parts are averaged here
            average_replicated_gradients(p for group in optimizer.param_groups for p in group["params"])
        clip = clip_grad_norm if self._sharded else partial(torch.nn.utils.clip_grad_norm_, foreach=True)
        # max_norm=inf measures without clipping: the norm is also what tells a non-finite gradient
        logs["grad_norm"] = clip([*self.tokenizer.parameters(), *self.loss.head_parameters()],
                                 self.hparams.grad_clip or float("inf"))
        d_norm = (clip(self.loss.discriminator.parameters(), self.hparams.grad_clip or float("inf"))
                  if self.loss.discriminator is not None else logs["grad_norm"])
        if self.hparams.max_bad_steps and self._is_bad_step(loss, logs["grad_norm"], d_norm):
            self._skip_step(optimizer, scheduler, state_before, step)
            return loss.detach()
        self._bad_in_a_row = 0
        optimizer.step()
        scheduler.step()
        if self.ema is not None:
            self.ema.update(self.tokenizer)

        self._log_step(images, output, logs)
        return loss.detach()

    # ---------------------------------------------------------------------------------- non-finite steps
    def _in_forward_state(self) -> dict[str, Tensor]:
        """What a forward pass changes in place (the bottleneck's codebook and statistics, buffers of tokenizer and
        loss), copied so that a step that turns out non-finite can be undone."""
        state = {f"quantizer.{k}": v for k, v in self.tokenizer.quantizer.state_dict(keep_vars=True).items()}
        state.update({f"tokenizer.{k}": v for k, v in self.tokenizer.named_buffers()})
        state.update({f"loss.{k}": v for k, v in self.loss.named_buffers()})
        return {k: v.detach().clone() for k, v in state.items()}

    def _restore_in_forward_state(self, saved: dict[str, Tensor]) -> None:
        current = {f"quantizer.{k}": v for k, v in self.tokenizer.quantizer.state_dict(keep_vars=True).items()}
        current.update({f"tokenizer.{k}": v for k, v in self.tokenizer.named_buffers()})
        current.update({f"loss.{k}": v for k, v in self.loss.named_buffers()})
        with torch.no_grad():
            for name, value in saved.items():
                current[name].copy_(value)

    def _is_bad_step(self, loss: Tensor, *norms: Tensor) -> bool:
        values = torch.stack([loss.detach().float(), *(n.detach().float().to(loss.device) for n in norms)])
        bad = (~torch.isfinite(values)).any().float().reshape(1)
        return bool(all_reduce_sum(bad).item())  # every rank skips the same steps

    def _skip_step(self, optimizer, scheduler, state_before: dict[str, Tensor], step: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()  # no parameter has a gradient: nothing moves, only the step count advances
        scheduler.step()
        self._restore_in_forward_state(state_before)
        self.skipped_steps += 1
        self._bad_in_a_row += 1
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        log.warning("step %d: non-finite loss or gradient, step skipped (no optimiser, EMA or codebook update); "
                    "%d in a row, %d in this run", step, self._bad_in_a_row, self.skipped_steps)
        if self._bad_in_a_row >= self.hparams.max_bad_steps:
            last = self._trainer.checkpoint_callback.last_model_path if self._trainer is not None and \
                self._trainer.checkpoint_callback is not None else ""
            raise NonFiniteTrainingError(
                f"{self._bad_in_a_row} steps in a row (up to step {step}) had a non-finite loss or gradient: the run "
                f"diverged. The last good checkpoint is {last or 'not written yet'}; lower module.lr or raise "
                f"module.warmup_steps, then resume (module.max_bad_steps sets how many are tolerated)")

    def _log_step(self, images: Tensor, output, logs: dict[str, Tensor]) -> None:
        if self.usage is not None and output.tokens.indices is not None:  # every step: the window counts them all
            counts = torch.bincount(output.tokens.indices.reshape(-1), minlength=self.usage.codebook_size)
            self.usage.update(all_reduce_sum(counts.float()))
        now = time.perf_counter()
        elapsed = None if self._last_step_time is None else now - self._last_step_time
        self._last_step_time = now
        if elapsed is not None:
            self.train_seconds += elapsed
            if self.hparams.time_budget and self._trainer is not None:
                if self.trainer.world_size > 1:
                    # the schedule reads the clock: every rank must read rank 0's, or learning rates drift apart
                    self.train_seconds = float(self.trainer.strategy.broadcast(self.train_seconds, src=0))
                if self.train_seconds >= self.hparams.time_budget:
                    self.trainer.should_stop = True  # the schedule has ended
        if not self._logs_this_step():
            return
        logs = {f"train/{k}": v for k, v in logs.items()}
        logs.update({f"train/{k}": v for k, v in output.stats.items()})
        if self.usage is not None and output.tokens.indices is not None:
            usage, perplexity = usage_and_perplexity(self.usage.counts())
            logs["train/codebook_usage"], logs["train/codebook_perplexity"] = usage, perplexity
        if elapsed is not None:
            world = self.trainer.world_size if self._trainer is not None else 1
            logs["train/images_per_second"] = torch.tensor(images.shape[0] * world / elapsed)
        logs["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        self.log_dict(logs, on_step=True, on_epoch=False)
        self.log("loss", logs["train/total"], prog_bar=True, on_step=True, logger=False)
        if "train/codebook_usage" in logs:
            self.log("usage", logs["train/codebook_usage"], prog_bar=True, on_step=True, logger=False)

    def _logs_this_step(self) -> bool:
        """Whether this step's metrics are handed to Lightning: on the steps its loggers write
        (``trainer.log_every_n_steps``) and the last. Each ``self.log`` costs about 2 ms of Lightning's
        bookkeeping whether or not a logger writes it; 15 of them on every step were 18% of the quick start's step.
        """
        if self._trainer is None:
            return True
        trainer = self.trainer
        step = trainer.global_step  # optimiser steps so far, this one included
        last = trainer.should_stop or (trainer.max_steps > 0 and step >= trainer.max_steps)
        return last or step % max(1, trainer.log_every_n_steps) == 0

    # ----------------------------------------------------------------------------------------- validation
    # Ranks may hold different numbers of validation batches (shards split by rank), so each batch is measured on
    # its rank alone and the ranks meet once, in on_validation_epoch_end, which every rank reaches.
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of PSNR, images)
        self._val_tokenizer = self.full_eval_tokenizer()  # whole: per-batch work must not wait for other ranks

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        if not images.shape[0]:  # every sample of the batch was unusable (counted by the collation)
            return
        tokenizer = self._val_tokenizer or self.eval_tokenizer
        with local_only():
            reconstruction = tokenizer.decode(tokenizer.encode(images, text=self.text_for(batch, False)))
        values = psnr(reconstruction.clamp(-1, 1), images)
        self._val_sums += torch.stack([values.sum().double(), values.new_tensor(values.numel()).double()])

    def on_validation_epoch_end(self) -> None:
        self._val_tokenizer = None
        total, count = all_reduce_sum(self._val_sums).tolist()
        if count:
            self.log("val/psnr", total / count, prog_bar=True)  # the same on every rank
            self.log("val/images", count)  # the same on every rank

    # ----------------------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer_config"] = self.tokenizer.config
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        checkpoint["rng"] = _get_rng_state()
        records = {name: term.checkpoint_record() for name, term in self.loss.terms.items()}
        checkpoint["loss_terms"] = {name: record for name, record in records.items() if record is not None}
        checkpoint["train_seconds"] = self.train_seconds
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        self._pending_rng = checkpoint.get("rng")
        self.train_seconds = checkpoint.get("train_seconds", 0.0)
        self.skipped_steps = checkpoint.get("skipped_steps", 0)


def _get_rng_state() -> dict[str, Any]:
    # Plain lists and tensors only: Lightning loads checkpoints with ``weights_only=True``.
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), position, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
