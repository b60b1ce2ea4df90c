"""Callbacks: a picture of reconstructions during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vtok.data.transforms import to_uint8


def image_grid(originals: Tensor, reconstructions: Tensor) -> Image.Image:
    """Two ``(B, 3, H, W)`` batches in ``[-1, 1]`` -> one picture, originals above reconstructions."""
    rows = []
    for batch in (originals, reconstructions):
        pixels = to_uint8(batch.detach().float().cpu().clamp(-1, 1))  # B, 3, H, W
        rows.append(torch.cat(list(pixels), dim=2))  # 3, H, B*W
    return Image.fromarray(torch.cat(rows, dim=1).permute(1, 2, 0).numpy())


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
        if step % self.every_n_steps or not trainer.is_global_zero:
            return
        images = batch["image"][: self.num_images]
        tokenizer = module.eval_tokenizer
        was_training = tokenizer.training
        tokenizer.eval()
        reconstructions = tokenizer.decode(tokenizer.encode(images)).clamp(-1, 1)
        tokenizer.train(was_training)
        grid = image_grid(images, reconstructions)
        out = Path(trainer.default_root_dir) / "images" / f"recon_{step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("reconstructions", np.asarray(grid), step, dataformats="HWC")
            elif type(logger).__name__ == "WandbLogger":
                logger.log_image("reconstructions", [grid], step=step)
