"""``python -m vtok.eval ckpt=... [data=...] [eval.*=...]``: evaluate a checkpoint or an exported tokenizer.

See ``configs/eval.yaml``. Under ``torchrun`` every rank evaluates its share and rank 0 writes the report.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from vtok.config import config_dir

log = logging.getLogger("vtok.eval")


def run(cfg: DictConfig) -> dict:
    """Load ``cfg.ckpt``, build the validation data for it, evaluate, write the report; returns the report."""
    import lightning as L
    from hydra.utils import instantiate

    from vtok.eval.protocol import evaluate_from_config
    from vtok.hub import load_tokenizer

    L.seed_everything(cfg.seed)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    tokenizer, source = load_tokenizer(cfg.ckpt, weights=cfg.weights)
    tokenizer = tokenizer.to(device).eval()
    with open_dict(cfg):
        if len(tokenizer.encoder.grid_shape((tokenizer.image_size, tokenizer.image_size))) == 1:
            # 1D tokens decode to one fixed size: evaluate exactly as training validated.
            cfg.data.image_size, cfg.eval.crop = tokenizer.image_size, "center"
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    datamodule.setup("validate")
    out = Path(cfg.out) if cfg.out else _default_out(Path(str(cfg.ckpt)))
    report = evaluate_from_config(tokenizer, datamodule.val_dataloader(), cfg.eval, cfg.data, out,
                                  extra={"checkpoint": str(cfg.ckpt), "weights": source}, device=device)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        summary = {k: report.get(k) for k in ("num_images", "psnr", "ssim", "lpips", "rfid", "codebook_usage",
                                               "bits_per_pixel")}
        print(json.dumps(summary, indent=2))
        print(f"report: {report['report_path']}")
    return report


def _default_out(ckpt: Path) -> Path:
    if ckpt.suffix == ".ckpt" and ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "eval"
    return Path("eval") / ckpt.name.replace("/", "--")


def main() -> None:
    import hydra

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hydra.main(config_path=str(config_dir()), config_name="eval", version_base="1.3")(run)()


if __name__ == "__main__":
    sys.exit(main())
