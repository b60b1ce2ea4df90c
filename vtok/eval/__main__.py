"""``python -m vtok.eval ckpt=... [data=...] [eval.*=...]``: evaluate a checkpoint or an exported tokenizer.

See ``configs/eval.yaml``. Under ``torchrun`` every rank evaluates its share and rank 0 writes the report.
Runs without Lightning: the validation set is built from ``data.val`` (and ``data.prepare``) directly.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from vtok.config import config_dir
from vtok.distributed import process_group, rank
from vtok.exit_deadline import install_exit_deadline

log = logging.getLogger("vtok.eval")


def run(cfg: DictConfig) -> dict:
    """Load ``cfg.ckpt``, build the validation data for it, evaluate, write the report; returns the report."""
    _seed(cfg.seed)
    install_exit_deadline(cfg.get("exit_grace_s", 30))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if device.type == "cuda" and device.index is None:  # one GPU per rank under torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    with process_group("nccl" if device.type == "cuda" else "gloo", cfg.get("collective_timeout_s", 1800)):
        return _evaluate(cfg, device)


def _evaluate(cfg: DictConfig, device: torch.device) -> dict:
    from hydra.utils import instantiate

    from vtok.checkpoint import load_tokenizer, read_checkpoint, tokenizer_from_checkpoint
    from vtok.data.validation import build_dataset, validation_loader
    from vtok.eval.protocol import evaluate_from_config

    extra: dict[str, Any] = {"checkpoint": str(cfg.ckpt)}
    if str(cfg.ckpt).endswith(".ckpt"):  # the step the evaluated weights come from, which an export names
        checkpoint = read_checkpoint(str(cfg.ckpt))
        tokenizer, source = tokenizer_from_checkpoint(checkpoint, cfg.weights)
        extra["train_steps"] = checkpoint.step
    else:
        tokenizer, source = load_tokenizer(cfg.ckpt, weights=cfg.weights)
    extra["weights"] = source
    tokenizer = tokenizer.to(device).eval()
    check_data_fits(tokenizer.fixed_size, cfg.data)
    if cfg.data.get("prepare") is not None:
        instantiate(cfg.data.prepare)()
    split = cfg.eval.get("split", "val")
    if cfg.data.get(split) is None:
        raise ValueError(f"eval.split={split}, but the data config has no data.{split}")
    dataset = build_dataset(instantiate(cfg.data[split]))
    loader = validation_loader(dataset, cfg.data.val_batch_size, cfg.data.get("num_workers", 1))
    out = Path(cfg.out) if cfg.out else default_out_dir(Path(str(cfg.ckpt)), Path(cfg.paths.output_dir))
    report = evaluate_from_config(tokenizer, loader, cfg.eval, cfg.data, out, extra=extra, device=device)
    if rank() == 0:
        summary = {k: report.get(k) for k in ("num_images", "psnr", "ssim", "lpips", "rfid", "codebook_usage",
                                               "bits_per_pixel")}
        print(json.dumps(summary, indent=2))
        print(f"report: {report['report_path']}")
    return report


def check_data_fits(fixed_size: int | None, data_cfg: Any) -> None:
    """Refuse, before any work, validation data that a fixed-size tokenizer cannot decode.

    1D tokenizers decode one image size: they are evaluated as they were validated in training, at
    ``data.image_size`` equal to their size with ``data.val_crop=center``. The config says so; vtok does not
    change it behind the user's back.

    Raises:
        ValueError: naming the overrides to add.
    """
    if fixed_size is None:
        return
    crop, size = data_cfg.get("val_crop", "center"), data_cfg.get("image_size")
    if crop == "full" or size != fixed_size:
        raise ValueError(
            f"this tokenizer decodes only {fixed_size}x{fixed_size} images (1D tokens carry no grid), but the data "
            f"gives data.val_crop={crop} at data.image_size={size}: add data.val_crop=center "
            f"data.image_size={fixed_size}")


def default_out_dir(ckpt: Path, output_dir: Path) -> Path:
    """``RUN/eval`` for a run's checkpoint, else ``outputs/eval/NAME`` for an exported folder or repo id."""
    if ckpt.suffix == ".ckpt" and ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "eval"
    return output_dir / "eval" / str(ckpt).strip("/").replace("/", "--")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main() -> None:
    import hydra

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hydra.main(config_path=str(config_dir()), config_name="eval", version_base="1.3")(run)()


if __name__ == "__main__":
    sys.exit(main())
