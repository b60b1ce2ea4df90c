"""Where the Hydra config tree lives, for the command-line entry points other than ``train.py``."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """``$VTOK_CONFIG_DIR``, else ``./configs``, else the ``configs/`` beside the package (a source checkout)."""
    for candidate in (os.environ.get("VTOK_CONFIG_DIR"), Path.cwd() / "configs",
                      Path(__file__).resolve().parents[1] / "configs"):
        if candidate and (Path(candidate) / "train.yaml").is_file():
            return Path(candidate).resolve()
    raise FileNotFoundError("no vtok config tree found: run from a vtok checkout or set "
                            "VTOK_CONFIG_DIR=/path/to/configs")


def sweep_job_subdir() -> str:
    """``/N`` inside job N of a Hydra multirun (one run directory per job), ``""`` otherwise.

    Registered as the ``vtok.sweep_job`` resolver: ``paths.run_dir`` is ``outputs/${run_name}${vtok.sweep_job:}``,
    so ``python train.py -m module.lr=1e-3,2e-3`` writes ``outputs/NAME/0`` and ``outputs/NAME/1`` (each with its
    overrides in ``.hydra/overrides.yaml``) instead of two jobs sharing one directory.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return ""
    return f"/{hydra.sweep.subdir}"


def per_rank(name: str) -> str:
    """``name`` for global rank 0, ``name_rankN`` for the others (the ``vtok.per_rank`` resolver).

    Under ``torchrun`` or ``srun`` every rank runs ``train.py`` itself, so Hydra's own files (``.hydra/``, the log)
    get one name per rank instead of several ranks writing the same file. The rank is the launcher's (``RANK``,
    then ``SLURM_PROCID``); Lightning's own launcher names its ranks' files itself.
    """
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    return name if rank == 0 else f"{name}_rank{rank}"


def patch_count(image_size: int, patch_size: int) -> int:
    """Patches of a square image: ``(image_size // patch_size) ** 2`` (``${vtok.patches:SIZE,PATCH}``)."""
    return (int(image_size) // int(patch_size)) ** 2


def register_resolvers() -> None:
    """Make vtok's config resolvers known to OmegaConf (idempotent; entry points call it before Hydra starts)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("vtok.sweep_job", sweep_job_subdir, replace=True)
    # Hydra's ${hydra:runtime.cwd} is not yet known where a multirun resolves its sweep directory; with
    # hydra.job.chdir=false the process's working directory is the same thing.
    OmegaConf.register_new_resolver("vtok.cwd", os.getcwd, replace=True)
    OmegaConf.register_new_resolver("vtok.per_rank", per_rank, replace=True)
    OmegaConf.register_new_resolver("vtok.patches", patch_count, replace=True)


register_resolvers()
