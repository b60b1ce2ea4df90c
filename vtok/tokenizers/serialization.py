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
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidPretrainedError, InvalidWeightsError, UnsafeConfigError
from .registry import FAMILIES
from .safetensors_header import check_fits, read_header

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "vtok-tokenizer"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")  # e.g. os.system, torch.nn.Linear

# Bounds on what a config may ask vtok to build, checked before anything is built.
MAX_CONFIG_BYTES = 2**20
MAX_DEPTH = 16                 # nesting of dicts and lists
MAX_LIST = 64                  # entries of one list (channel multipliers, FSQ levels)
MAX_INT = 2**24                # any size (widths, codebook sizes)
MAX_COUNT = 1024               # repeated structure: blocks, layers, heads, groups, stages
COUNT_KEYS = ("num_res_blocks", "depth", "heads", "num_heads", "layers", "num_layers", "groups", "num_tokens")
# The model a config builds may hold at most this many bytes beyond what its weights file holds (buffers computed
# at construction, such as position tables), so a small file cannot make vtok allocate a huge model.
MAX_EXTRA_BYTES = 256 * 2**20

__all__ = ["InvalidPretrainedError", "InvalidWeightsError", "UnsafeConfigError", "load_pretrained",
           "save_pretrained"]


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
    """Raise :class:`UnsafeConfigError` unless ``config`` names an allowlisted family and no import paths, and
    :class:`InvalidPretrainedError` unless its values are within vtok's bounds (sizes, counts, nesting)."""
    if not isinstance(config, dict):
        raise InvalidPretrainedError(f"config.json holds a {type(config).__name__}, not an object")
    if config.get("format") != FORMAT:
        raise UnsafeConfigError(f"config.json is not a vtok tokenizer (format={config.get('format')!r}, "
                                f"expected {FORMAT!r})")
    if not isinstance(config.get("family"), str) or config["family"] not in FAMILIES:
        raise UnsafeConfigError(f"unknown tokenizer family {config.get('family')!r}; vtok loads only "
                                f"{sorted(FAMILIES)}")
    check_plain(config, "config")
    check_bounds(config.get("tokenizer"), "config.tokenizer")
    if not isinstance(config.get("tokenizer"), dict):
        raise InvalidPretrainedError("config.tokenizer must be an object of encoder/quantizer/decoder settings")


def check_bounds(value: Any, where: str, depth: int = 0, key: str = "") -> None:
    """Raise :class:`InvalidPretrainedError` for values past :data:`MAX_DEPTH`, :data:`MAX_LIST`, :data:`MAX_INT`
    (:data:`MAX_COUNT` for :data:`COUNT_KEYS`), and non-finite numbers."""
    if depth > MAX_DEPTH:
        raise InvalidPretrainedError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for k, item in value.items():
            check_bounds(item, f"{where}.{k}", depth + 1, str(k))
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise InvalidPretrainedError(f"{where}: {len(value)} entries, at most {MAX_LIST}")
        for i, item in enumerate(value):
            check_bounds(item, f"{where}[{i}]", depth + 1, key)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        limit = MAX_COUNT if key in COUNT_KEYS else MAX_INT
        if abs(value) > limit:
            raise InvalidPretrainedError(f"{where} = {value}: vtok builds sizes up to {limit:,}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidPretrainedError(f"{where} = {value}: not a finite number")


def check_regular_file(path: Path) -> None:
    """Raise :class:`InvalidPretrainedError` unless ``path`` is (or links to) a regular file: a link to a device,
    a pipe or a folder would be read without end or not at all."""
    if not stat.S_ISREG(path.stat().st_mode):
        target = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise InvalidPretrainedError(f"{path} is not a regular file{target}")


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` parsed, bounded in size and nesting.

    Raises:
        InvalidPretrainedError: too large, not UTF-8 JSON, or nested too deep.
    """
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidPretrainedError(f"{path}: {path.stat().st_size} bytes, at most {MAX_CONFIG_BYTES}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidPretrainedError(f"{path} is not valid UTF-8 JSON ({type(error).__name__})") from error


def build_checked(family: type, settings: dict[str, Any], weight_bytes: int | None = None
                  ) -> tuple[Any, dict[str, torch.Tensor]]:
    """Build ``family(**settings)`` once on the meta device (no memory), check the size it implies, then for real.

    Returns:
        ``(model, the state dict it expects)`` (the latter on the meta device: names, shapes, dtypes).

    Args:
        weight_bytes: size of the weights file that will fill the model: the model may not need more than that
            plus :data:`MAX_EXTRA_BYTES`.

    Raises:
        InvalidPretrainedError: the settings do not build a model (any exception in a constructor), or the model
            is larger than its weights allow.
    """
    try:
        with torch.device("meta"):
            meta = family(**settings)
    except InvalidPretrainedError:
        raise
    except Exception as error:  # a constructor's own complaint about its arguments, whatever its type
        raise InvalidPretrainedError(f"config.tokenizer does not describe a buildable tokenizer: "
                                     f"{type(error).__name__}: {str(error)[:300]}") from error
    tensors = [*meta.parameters(), *meta.buffers()]
    needed = sum(t.numel() * t.element_size() for t in tensors)
    if weight_bytes is not None and needed > weight_bytes + MAX_EXTRA_BYTES:
        raise InvalidPretrainedError(f"config.tokenizer describes a model of {needed / 2**20:,.0f} MB, far more than "
                                     f"its weights file holds ({weight_bytes / 2**20:,.0f} MB)")
    expected = meta.state_dict()
    try:
        model = family(**settings)
    except Exception as error:
        raise InvalidPretrainedError(f"config.tokenizer does not build: {type(error).__name__}: "
                                     f"{str(error)[:300]}") from error
    return model, expected


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

    The config is parsed with bounds, checked against the allowlists, built on the meta device to learn the shapes
    and size it implies, and compared with the safetensors header before any real tensor is allocated.

    Raises:
        UnsafeConfigError: the config names an unknown family/kind, an import path, or instantiation keys.
        InvalidWeightsError: the weights file is malformed or does not fit the config (names, shapes, dtypes).
        InvalidPretrainedError: (the base of both) anything else wrong with the config: bounds, types, values.
        FileNotFoundError: no ``config.json``, or only pickled weights (never loaded).
    """
    from safetensors.torch import load_file

    folder = Path(path_or_repo)
    if not folder.is_dir():
        folder = _download(str(path_or_repo), revision)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.exists():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; export a tokenizer with `vtok-export`")
    check_regular_file(config_file)
    if weights_file.exists():
        check_regular_file(weights_file)
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (f" It holds only pickled weights ({', '.join(pickles)}), which vtok never loads from a downloaded "
                "folder because unpickling runs code; convert them with `vtok-export` where you trust the file."
                if pickles else "")
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}.{hint}")
    config = read_config(config_file)
    check_config(config)
    header = read_header(weights_file)
    tokenizer, expected = build_checked(FAMILIES[config["family"]], config["tokenizer"],
                                        weights_file.stat().st_size)
    check_fits(header, expected, weights_file)
    try:
        state = load_file(str(weights_file), device="cpu")
    except Exception as error:  # the header was checked; anything left is a damaged file
        raise InvalidWeightsError(f"{weights_file} cannot be read: {type(error).__name__}: {error}") from error
    tokenizer.load_state_dict(state, strict=True)
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
