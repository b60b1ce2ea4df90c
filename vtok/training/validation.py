"""Validation during training: held-out PSNR of the weights evaluation uses (the EMA when kept).

Ranks may hold different numbers of validation batches (shards split by rank), so each batch is measured on its
rank alone and the ranks meet once, in ``on_validation_epoch_end``, which every rank reaches.
"""

from __future__ import annotations

from typing import Any

import torch

from vtok.distributed import all_reduce_sum, local_only
from vtok.images import psnr
from vtok.tokenizers import Tokenizer

from .sharding import full_state_dict


class HeldOutPSNR:
    """Lightning validation hooks for :class:`~vtok.training.TokenizerModule` (a mixin: it reads the module's
    ``tokenizer``, ``ema``, ``sharded``, ``device`` and ``text_for``), logging ``val/psnr`` and ``val/images``."""

    @property
    def eval_tokenizer(self) -> Tokenizer:
        """The EMA weights when kept, else the live weights."""
        return self.ema.model if self.ema is not None else self.tokenizer

    def full_eval_tokenizer(self) -> Tokenizer:
        """The weights evaluation uses (the EMA when kept) as one whole model. Under ``trainer=fsdp`` the shards are
        gathered into a fresh copy: a collective, so every rank calls it."""
        if not self.sharded:
            return self.eval_tokenizer
        whole = Tokenizer(**self.tokenizer.config).to(self.device)
        whole.load_state_dict(full_state_dict(self.eval_tokenizer))
        return whole.eval().requires_grad_(False)

    def on_validation_epoch_start(self) -> None:
        # A plain dict, so the whole copy is not registered as a submodule (nor saved in a checkpoint).
        # sums: (PSNR, images, decoder loss x images) summed over this rank's batches
        self._validation = {"sums": torch.zeros(3, dtype=torch.float64, device=self.device),
                            "tokenizer": self.full_eval_tokenizer()}  # whole: batches must not wait for other ranks

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        if not images.shape[0]:  # every sample of the batch was unusable (counted by the collation)
            return
        tokenizer = self._validation["tokenizer"]
        with local_only():
            tokens = tokenizer.encode(images, text=self.text_for(batch, False))
            reconstruction = tokenizer.decode(tokens)
            decoder_loss = images.new_zeros(())
            if tokenizer.generative:  # the held-out flow loss, at the same noise and times every validation
                generator = torch.Generator().manual_seed(batch_idx)
                decoder_loss = tokenizer.decoder_loss(tokens, images, generator=generator).loss * len(images)
        values = psnr(reconstruction.clamp(-1, 1), images)
        self._validation["sums"] += torch.stack([values.sum().double(), values.new_tensor(values.numel()).double(),
                                                 decoder_loss.detach().double()])

    def on_validation_epoch_end(self) -> None:
        total, count, decoder_loss = all_reduce_sum(self._validation.pop("sums")).tolist()
        generative = self._validation.pop("tokenizer").generative
        self._validation.clear()
        if count:
            self.log("val/psnr", total / count, prog_bar=True)  # the same on every rank
            self.log("val/images", count)  # the same on every rank
            if generative:
                self.log("val/decoder_loss", decoder_loss / count)
