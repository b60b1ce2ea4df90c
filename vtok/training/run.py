"""``fit(cfg)``: build everything a Hydra config names and train it (evaluation is the entry layer's: see
:mod:`vtok.experiment`)."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vtok.checkpoint import load_tokenizer, read_checkpoint
from vtok.config_checks import check_run_config

from .checkpoint_io import newest_good_checkpoint
from .module import TokenizerModule
from .progress import route_lightning_logs

log = logging.getLogger(__name__)

# Checkpoints hold the state after the optimiser step of their batch: exactly what an exact resume needs.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# Frozen networks (LPIPS, teachers, text encoders) stay in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
# Lightning's own use of a deprecated torch API: nothing a user can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``ckpt_path``, or with ``resume=auto`` the run dir's ``last.ckpt``, or when
    that cannot be read (a truncated file), the readable checkpoint with the highest step (the log says so).

    Raises:
        FileExistsError: the run dir already has checkpoints and neither resume nor overwrite was asked.
        FileNotFoundError: ``ckpt_path`` does not exist.
        UnreadableCheckpointError: ``ckpt_path`` is truncated or corrupt (naming the file).
        ValueError: an unknown ``resume`` value.
    """
    checkpoints = Path(cfg.paths.run_dir) / "checkpoints"
    last = checkpoints / "last.ckpt"
    if cfg.ckpt_path:
        read_checkpoint(cfg.ckpt_path)  # a missing or damaged file is named before anything is built
        return str(cfg.ckpt_path)
    if cfg.resume not in (None, "auto"):
        raise ValueError(f"resume={cfg.resume!r}: use resume=auto, or ckpt_path=PATH for a given checkpoint")
    if cfg.resume == "auto":
        chosen, skipped = newest_good_checkpoint(checkpoints)
        for reason in skipped:
            log.warning("resume=auto: skipping %s", reason)
        if chosen is not None:
            if chosen != last:
                log.warning("resume=auto: resuming from %s, the newest readable checkpoint", chosen)
            return str(chosen)
        log.info("resume=auto: no readable checkpoint in %s yet, starting a new run", checkpoints)
        return None
    if last.is_file():
        if not cfg.overwrite:
            raise FileExistsError(
                f"{checkpoints} already holds checkpoints. Continue with resume=auto, start afresh with "
                f"overwrite=true (old checkpoints are moved aside), or pick another run_name=..."
            )
        aside = checkpoints.with_name(f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(checkpoints), aside)
        log.info("overwrite=true: moved old checkpoints to %s", aside)
    return None


def build(cfg: DictConfig) -> tuple[TokenizerModule, L.LightningDataModule, L.Trainer]:
    """Instantiate the module, data module and trainer a config describes."""
    datamodule = instantiate(cfg.data)
    init = cfg.get("init") or {}
    if init.get("tokenizer"):  # a trained tokenizer: its own architecture and weights (cfg.model is not used)
        tokenizer, source = load_tokenizer(init.tokenizer, weights=init.get("weights", "ema"))
        tokenizer.train()
        log.info("starting from %s", source)
    else:
        tokenizer = instantiate(cfg.model)
    loss = instantiate(cfg.loss)
    module = TokenizerModule(tokenizer, loss, **OmegaConf.to_container(cfg.module, resolve=True))
    if init.get("checkpoint"):
        load_stage(module, init.checkpoint)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    # plain lists, not OmegaConf's (Lightning before 2.5 took a ListConfig of plugins for one plugin)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                          default_root_dir=cfg.paths.run_dir, _convert_="partial")
    return module, datamodule, trainer


def load_stage(module: TokenizerModule, path: str) -> None:
    """Start from an earlier stage's checkpoint: every weight of ``module`` that it holds (tokenizer, EMA, loss
    heads, projector, trained LLM weights); the optimiser, step and data position start afresh.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it holds none of the tokenizer's weights (a checkpoint of another run kind).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"init.checkpoint={path} does not exist")
    checkpoint = read_checkpoint(path)
    state = checkpoint.state_dict
    if not any(key.startswith("tokenizer.") for key in state):
        raise ValueError(f"init.checkpoint={path} holds no tokenizer weights: it was not written by vtok's trainer")
    missing, unexpected = module.load_state_dict(state, strict=False)
    tokenizer_missing = [key for key in missing if key.startswith("tokenizer.")]
    if tokenizer_missing or unexpected:
        raise ValueError(f"init.checkpoint={path} does not fit this run's tokenizer or loss terms: missing "
                         f"{tokenizer_missing[:5]}, unexpected {unexpected[:5]}")
    if module.ema is not None and checkpoint.ema is not None:
        module.ema.load_state_dict(checkpoint.ema)
    log.info("started from %s (step %s); not in it, kept as built: %s", path, checkpoint.step,
             sorted({key.split(".")[0] + "." + key.split(".")[1] for key in missing}) or "nothing")


def parameter_summary(module: TokenizerModule) -> str:
    """What trains and what is frozen, by part: the useful lines of Lightning's model summary in one."""
    parts = {"tokenizer": module.tokenizer, **{f"loss term {n}": t for n, t in module.loss.terms.items()}}
    if module.loss.discriminator is not None:
        parts["discriminator"] = module.loss.discriminator
    counted = {id(p) for part in parts.values() for p in part.parameters()}
    rest = [p for p in module.loss.parameters() if id(p) not in counted]  # LPIPS, teachers, text encoder
    described = []
    for name, part in [*parts.items(), ("frozen networks", rest)]:
        params = list(part.parameters()) if isinstance(part, torch.nn.Module) else part
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        if trainable or frozen:
            described.append(f"{name} {trainable / 1e6:.2f} M trainable" + (f" + {frozen / 1e6:.2f} M frozen"
                                                                           if frozen else ""))
    return "; ".join(described)


def fit(cfg: DictConfig) -> tuple[TokenizerModule, L.LightningDataModule, L.Trainer]:
    """Fit the configured tokenizer (resuming as ``cfg`` asks); returns what was built, trained."""
    route_lightning_logs()
    check_run_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_checkpoint(cfg)
    module, datamodule, trainer = build(cfg)
    log.info("tokenizer: %.2f M parameters, %s tokens per %dpx image, %.2f bits per token",
             sum(p.numel() for p in module.tokenizer.parameters()) / 1e6, module.tokenizer.num_tokens(),
             module.tokenizer.image_size, module.tokenizer.bits_per_token)
    log.info("parameters: %s", parameter_summary(module))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, datamodule, trainer
