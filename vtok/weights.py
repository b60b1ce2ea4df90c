"""Pretrained files (LPIPS backbones, the FID Inception network) and models (teachers, text encoders): where they
come from and how to get them.

Every pretrained part resolves its file the same way: a path from the config, else the torch hub cache, else a
download; the file's SHA-256 is checked against the prefix its name carries wherever it came from. When none works
(air-gapped clusters, CI) it stops with :class:`MissingWeightsError` naming the file and the config key, never
falling back to random weights.

``python -m vtok.weights out=DIR [experiment=... other overrides]`` downloads every file the composed config
needs into ``DIR`` (on a machine with network), checks each checksum, fetches every ``transformers`` model it
loads by hub id (image teachers, text encoders) into ``DIR/models/``, and prints the overrides that point the
config at them.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vtok.cli import key
from vtok.cli import run as run_command


@dataclass(frozen=True)
class PretrainedFile:
    """One downloadable weights file; ``sha256_prefix`` is the hash prefix torch hub file names carry."""

    filename: str
    url: str
    sha256_prefix: str
    what: str


FILES: dict[str, PretrainedFile] = {
    "lpips_vgg": PretrainedFile("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                                "397923af", "LPIPS (vgg) backbone, torchvision VGG16"),
    "lpips_alex": PretrainedFile("alexnet-owt-7be5be79.pth",
                                 "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                                 "7be5be79", "LPIPS (alex) backbone, torchvision AlexNet"),
    "fid_inception": PretrainedFile(
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/pt_inception-2015-12-05-6726825d.pth",
        "6726825d", "FID Inception-v3 (the TF FID graph ported by torch-fidelity)"),
}


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are neither at the configured path nor downloadable."""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WrongWeightsError(ValueError):
    """A pretrained weights file whose SHA-256 does not match the one its name promises (a partial download, a
    different file under the expected name)."""


def resolve_weights(filename: str, url: str, path: str | None, config_key: str, what: str,
                    sha256_prefix: str | None = None) -> Path:
    """Find a pretrained weights file: ``path`` if given, else the torch hub cache, else download it; then check
    its SHA-256 against ``sha256_prefix`` wherever it came from.

    Raises:
        MissingWeightsError: naming ``filename`` and ``config_key`` when the file cannot be had.
        WrongWeightsError: the file's hash does not start with ``sha256_prefix`` (naming the file and the key).
    """
    if path:
        if not Path(path).is_file():
            raise MissingWeightsError(
                f"{what}: weights file {path} does not exist. Point {config_key}=/path/to/{filename} at a copy "
                f"of {url}."
            )
        return _checked(Path(path), sha256_prefix, config_key, url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return _checked(cached, sha256_prefix, config_key, url)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as error:  # offline: URLError, socket errors, ...
        if cached.exists() and cached.stat().st_size == 0:
            cached.unlink()
        raise MissingWeightsError(
            f"{what} needs {filename} and could not download it ({type(error).__name__}: {error}). "
            f"Fetch {url} on a machine with network, then set {config_key}=/path/to/{filename} "
            f"or copy it to {cached}. `python -m vtok.weights out=DIR ...` downloads every file a config needs."
        ) from error
    return _checked(cached, sha256_prefix, config_key, url)


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> digest: each file hashed once a process


def _checked(path: Path, sha256_prefix: str | None, config_key: str, url: str) -> Path:
    if sha256_prefix is None:
        return path
    status = path.stat()
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
    digest = _VERIFIED.get(key) or sha256(path)
    if not digest.startswith(sha256_prefix):
        raise WrongWeightsError(
            f"{path}: sha256 {digest[:12]}... does not start with {sha256_prefix}, the hash its name promises (a "
            f"partial download or another file). Replace it with {url}, or point {config_key} at a good copy.")
    _VERIFIED[key] = digest
    return path


def resolve(name: str, path: str | None, config_key: str) -> Path:
    """:func:`resolve_weights` for a file of :data:`FILES`, its hash checked."""
    file = FILES[name]
    return resolve_weights(file.filename, file.url, path, config_key, file.what, file.sha256_prefix)


def files_needed(cfg: Any) -> list[tuple[str, str]]:
    """``(file name in FILES, config key)`` for every pretrained file a composed train/eval config uses."""
    needed: list[tuple[str, str]] = []
    loss = cfg.get("loss") or {}
    perceptual = loss.get("perceptual") or {}
    if (loss.get("perceptual_weight") or 0) > 0 and not perceptual.get("random_backbone"):
        net = perceptual.get("net", "vgg")
        needed.append((f"lpips_{net}", "loss.perceptual.backbone_path"))
    evaluation = cfg.get("eval") or {}
    if evaluation.get("fid"):
        needed.append(("fid_inception", "eval.inception_path"))
    if evaluation.get("lpips"):
        needed.append((f"lpips_{evaluation.get('lpips_net', 'alex')}", "eval.lpips_backbone_path"))
    probe = cfg.get("probe") or {}
    if evaluation.get("ar_probe") and probe.get("fid_samples"):
        needed.append(("fid_inception", "probe.inception_path"))
    return needed


def models_needed(cfg: Any) -> list[tuple[str, str]]:
    """``(hub id or folder, config key)`` of every ``transformers`` model a composed train config loads."""
    loss = cfg.get("loss") or {}
    teachers = cfg.get("teachers") or {}
    needed: list[tuple[str, str]] = []
    terms = [term for term in (loss.get("terms") or {}).values() if term]
    image = teachers.get("image") or {}
    if any("teacher" in term for term in terms) and image.get("source"):
        needed.append((str(image.get("source")), "teachers.image.source"))
    text = teachers.get("text") or {}
    if loss.get("text_encoder") and text.get("source"):
        needed.append((str(text.get("source")), "teachers.text.source"))
    return needed


def download_model(source: str, out_dir: Path) -> Path:
    """A hub model's files into ``out_dir/models/ORG--NAME`` (a local folder is returned as it is)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    target = out_dir / "models" / source.replace("/", "--")
    return Path(snapshot_download(source, local_dir=str(target)))


def download(name: str, out_dir: Path) -> Path:
    """Download one file of :data:`FILES` into ``out_dir`` (kept if already there) and check its hash prefix."""
    file = FILES[name]
    target = out_dir / file.filename
    if not target.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(file.url, str(target), progress=True)
    return _checked(target, file.sha256_prefix, "its config key", file.url)


@dataclass
class WeightsCommand:
    """The keys of ``python -m vtok.weights`` (any other key=value is a training override)."""

    out: str = key(help="folder to download into (files at the top, transformers models under models/)")


def main(argv: list[str] | None = None) -> int:
    """``python -m vtok.weights out=DIR [training overrides...]``: fetch every pretrained file the config needs."""
    return run_command("python -m vtok.weights", "Download every pretrained file and model a training config "
                       "needs, check each checksum, and print the overrides that point the config at them.",
                       WeightsCommand, _weights_command, argv,
                       passthrough="Every other key=value (experiment=NAME, loss.terms...) is an override of the "
                                   "training config whose needs are fetched, as train.py takes it.")


def _weights_command(parsed: tuple[WeightsCommand, list[str]]) -> int:
    from hydra import compose, initialize_config_dir

    from vtok.config import config_dir

    args, overrides = parsed
    out = args.out
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="train", overrides=overrides)
    needed, models = files_needed(cfg), models_needed(cfg)
    if not needed and not models:
        print("this config needs no pretrained files")
        return 0
    failures, keys = 0, []
    for source, config_key in models:
        try:
            keys.append(f"{config_key}={download_model(source, Path(out)).resolve()}")
            print(f"ok       {source} ({config_key})")
        except Exception as error:  # report every model, then fail
            failures += 1
            print(f"FAILED   {source} ({config_key}): {type(error).__name__}: {error}", file=sys.stderr)
    for name, config_key in needed:
        try:
            path = download(name, Path(out))
            keys.append(f"{config_key}={path.resolve()}")
            print(f"ok       {FILES[name].filename} ({FILES[name].what})")
        except Exception as error:  # report every file, then fail
            failures += 1
            print(f"FAILED   {FILES[name].filename} from {FILES[name].url}: {type(error).__name__}: {error}",
                  file=sys.stderr)
    if keys:
        print("\nadd to the command line:\n  " + " ".join(keys))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
