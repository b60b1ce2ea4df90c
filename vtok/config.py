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
