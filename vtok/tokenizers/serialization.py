"""A tokenizer's own saved form: Hugging Face-style folders of ``config.json`` (plain data) + ``model.safetensors``.

(Three things are "pretrained" in vtok, each with one home: this module saves and loads *a tokenizer*;
:mod:`vtok.checkpoint` reads vtok's *training checkpoints* (``.ckpt``) and either form through one call;
:mod:`vtok.weights` finds the *third-party networks* that losses and metrics need, such as LPIPS or Inception.)

Loading never runs code a file chooses: the config names a family from :data:`FAMILIES` and component kinds
from the allowlists, any key or value that looks like an import path is refused, and weights are read only from
safetensors (a folder holding only pickles is refused). Needs torch, safetensors and vtok; huggingface_hub only
to fetch a repo id.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "vtok-tokenizer"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")  # e.g. os.system, torch.nn.Linear


class UnsafeConfigError(ValueError):
    """A pretrained config asks for something outside vtok's allowlists."""


def families() -> dict[str, type]:
    """Tokenizer classes a config may name."""
    from .tokenizer import Tokenizer

    return {"Tokenizer": Tokenizer}


def save_pretrained(tokenizer: Any, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``tokenizer`` into ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": 1,
        "family": type(tokenizer).__name__,
        "tokenizer": tokenizer.config,
        "image_size": tokenizer.image_size,
        "normalization": {"range": [-1.0, 1.0], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                          "layout": "(B, 3, H, W) RGB, x = (pixel / 255 - mean) / std"},
        "vocab_size": tokenizer.vocab_size,
        "bits_per_token": tokenizer.bits_per_token,
        "num_tokens": tokenizer.num_tokens(),
        "flexible_length": tokenizer.flexible,
        **(extra or {}),
    }
    check_config(config)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in tokenizer.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt", "vtok_format": FORMAT})
    return out


def check_config(config: dict[str, Any]) -> None:
    """Raise :class:`UnsafeConfigError` unless ``config`` names an allowlisted family and no import paths."""
    if config.get("format") != FORMAT:
        raise UnsafeConfigError(f"config.json is not a vtok tokenizer (format={config.get('format')!r}, "
                                f"expected {FORMAT!r})")
    if config.get("family") not in families():
        raise UnsafeConfigError(f"unknown tokenizer family {config.get('family')!r}; vtok loads only "
                                f"{sorted(families())}")
    check_plain(config, "config")


def check_plain(value: Any, where: str, file_keys: tuple[str, ...] = ()) -> None:
    """Raise :class:`UnsafeConfigError` unless ``value`` is plain data: no instantiation keys, no import paths
    (except under ``file_keys``, whose values are file names such as ``model.gguf``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("_"):
                raise UnsafeConfigError(f"{where}: key {key!r} is refused (configs are plain data, no "
                                        "_target_ or other instantiation keys)")
            if key in file_keys and isinstance(item, str):
                continue
            check_plain(item, f"{where}.{key}", file_keys)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]", file_keys)
    elif isinstance(value, str) and _IMPORT_PATH.match(value):
        raise UnsafeConfigError(f"{where} = {value!r} looks like a Python import path; vtok configs name "
                                "components by kind from allowlists, never by import path")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise UnsafeConfigError(f"{where}: value of type {type(value).__name__} is not plain data")


def load_pretrained(path_or_repo: str | Path, device: str = "cpu", revision: str | None = None) -> Any:
    """A tokenizer from an exported folder or a Hugging Face repo id, in eval mode.

    Raises:
        UnsafeConfigError: the config names an unknown family/kind, an import path, or instantiation keys.
        FileNotFoundError: no ``config.json``, or only pickled weights (never loaded).
    """
    from safetensors.torch import load_file

    folder = Path(path_or_repo)
    if not folder.is_dir():
        folder = _download(str(path_or_repo), revision)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; export a tokenizer with `vtok-export`")
    if not weights_file.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (f" It holds only pickled weights ({', '.join(pickles)}), which vtok never loads from a downloaded "
                "folder because unpickling runs code; convert them with `vtok-export` where you trust the file."
                if pickles else "")
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}.{hint}")
    config = json.loads(config_file.read_text())
    check_config(config)
    tokenizer = families()[config["family"]](**config["tokenizer"])
    tokenizer.load_state_dict(load_file(str(weights_file), device="cpu"), strict=True)
    return tokenizer.to(device).eval()


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"]))
    except Exception as error:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(error).__name__}: {error}). Offline, download the folder elsewhere and pass its path."
        ) from error
