"""Callbacks: a picture of reconstructions during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from vtok.images import image_grid


class ReconstructionGrid(L.Callback):
    """Every ``every_n_steps``, saves ``images/recon_STEP.png`` under the run directory and sends it to
    TensorBoard or wandb when those loggers are active.

    Args:
        every_n_steps: interval in optimiser steps.
        num_images: images from the current batch to show.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 8) -> None:
        self.every_n_steps, self.num_images = every_n_steps, num_images

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        tokenizer = module.full_eval_tokenizer()  # every rank: under trainer=fsdp this gathers the shards
        if not trainer.is_global_zero:
            return
        images = batch["image"][: self.num_images]
        text = module.text_for(batch, for_loss=False)
        was_training = tokenizer.training
        tokenizer.eval()
        reconstructions = tokenizer.decode(tokenizer.encode(images, text=None if text is None else
                                                            text[: self.num_images])).clamp(-1, 1)
        tokenizer.train(was_training)
        grid = image_grid(images, reconstructions)
        out = Path(trainer.default_root_dir) / "images" / f"recon_{step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("reconstructions", np.asarray(grid), step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image("reconstructions", [grid], step=step)
