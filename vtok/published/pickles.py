"""Third-party ``.ckpt`` / ``.pt`` files are pickles: read them with ``weights_only=True`` and a short allowlist.

``torch.load(weights_only=True)`` rebuilds only tensors and plain containers; this module adds the few harmless
classes published tokenizer checkpoints hold beside their weights (``argparse.Namespace`` of training arguments,
and the class reference Lightning 1.x stores as a key of its callback states, mapped to an inert stand-in). A file
that needs anything else is refused with the class named, and nothing in it runs: vtok never loads a third-party
file with ``weights_only=False``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from vtok.tokenizers.errors import InvalidPretrainedError


class UnsafePickleError(InvalidPretrainedError):
    """A checkpoint holds a Python object outside the allowlist (named in the message); it was not loaded."""


class _InertReference:
    """Stands in for a class a checkpoint names only as a dictionary key (Lightning 1.x callback states); it can
    be created and given state, and does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


ALLOWED: list[Any] = [
    argparse.Namespace,
    (_InertReference, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
]


def load_pickle(path: str | Path) -> Any:
    """The object in a third-party torch pickle (on the CPU), rebuilt from tensors, plain data and the allowlist.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: it needs a class outside the allowlist (named).
        InvalidPretrainedError: truncated or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(ALLOWED):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise UnsafePickleError(
                f"{path} holds a {found[1]} object, which vtok does not unpickle (unpickling runs code the file "
                "chooses; vtok only rebuilds tensors, plain data and argparse.Namespace). Where you trust the file, "
                "save its state dict alone with torch.save(torch.load(path, weights_only=False)['state_dict'], "
                "'weights.pt') and import that") from error
        raise InvalidPretrainedError(f"{path} cannot be read as a torch checkpoint ({type(error).__name__}: "
                                     f"{str(error)[:200]})") from error


def state_dict_of(checkpoint: Any, prefer: tuple[str, ...] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: under the first of ``prefer`` it has, or the object itself when it is
    already a flat ``{name: tensor}``.

    Raises:
        InvalidPretrainedError: no state dict found (the keys it has are named).
    """
    if isinstance(checkpoint, dict):
        for key in prefer:
            if isinstance(checkpoint.get(key), dict):
                return {k: v for k, v in checkpoint[key].items() if isinstance(v, torch.Tensor)}
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint)
    keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise InvalidPretrainedError(f"no state dict under {list(prefer)} in the checkpoint (it has {keys})")
