"""Read a vtok training checkpoint (``.ckpt``) once, into a typed record; build a tokenizer from it or from an
exported folder.

This is the one place a ``.ckpt`` is opened: resume, stage initialisation, export, evaluation and captioning all
go through :func:`read_checkpoint`. It needs torch, safetensors and vtok, no Lightning. A checkpoint is read with
``weights_only=True`` (tensors and plain types only), so reading one never runs code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vtok.tokenizers import Tokenizer
from vtok.tokenizers.errors import InvalidPretrainedError, InvalidWeightsError
from vtok.tokenizers.serialization import build_checked, check_bounds, check_plain, load_pretrained

TOKENIZER_PREFIX = "tokenizer."
TERM_PREFIX = "loss.terms."


class UnreadableCheckpointError(InvalidPretrainedError):
    """A checkpoint file is truncated, corrupt or not a vtok training checkpoint (the message names the file)."""


@dataclass(frozen=True)
class TrainingCheckpoint:
    """What a vtok training checkpoint holds.

    Attributes:
        path: the file.
        step: optimiser steps taken (``global_step``).
        state_dict: every weight of the training module: ``tokenizer.*``, ``loss.*`` (terms' heads, an LLM
            bridge, the discriminator).
        tokenizer_config: the plain-data definition ``Tokenizer(**config)`` rebuilds (``None`` in checkpoints of
            vtok versions that did not write it).
        ema: the weight average (``{"decay", "updates", "weights"}``), ``None`` when the run kept none.
        loss_terms: each loss term's ``checkpoint_record()`` by name (what tools need to rebuild it).
        raw: the whole file as Lightning wrote it (optimiser, loops, callbacks, RNG): what resume reads.
    """

    path: Path
    step: int
    state_dict: dict[str, Tensor]
    tokenizer_config: dict[str, Any] | None
    ema: dict[str, Any] | None
    loss_terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def tokenizer_weights(self, weights: str = "ema") -> tuple[dict[str, Tensor], str]:
        """``(tokenizer state dict, which weights)``: ``ema`` (the average when kept, else the live weights) or
        ``live``.

        Raises:
            ValueError: ``weights`` is neither.
        """
        if weights not in ("ema", "live"):
            raise ValueError(f"weights={weights!r}: use ema or live")
        if weights == "ema" and self.ema is not None:
            return self.ema["weights"], "ema"
        live = {k[len(TOKENIZER_PREFIX):]: v for k, v in self.state_dict.items() if k.startswith(TOKENIZER_PREFIX)}
        return live, "live" if weights == "live" else "live (the checkpoint kept no EMA)"

    def term_state(self, name: str) -> dict[str, Tensor]:
        """The weights of loss term ``name`` (prefix ``loss.terms.NAME.`` removed)."""
        prefix = f"{TERM_PREFIX}{name}."
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}


def read_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """Open a training checkpoint on the CPU (tensors memory-mapped, read as they are used).

    Raises:
        FileNotFoundError: no such file.
        UnreadableCheckpointError: truncated, corrupt, or without ``state_dict`` / ``global_step``; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated zip, bad pickle, wrong magic: all mean the same to a user
        raise UnreadableCheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}: "
                                        f"{str(error)[:200]}): truncated or corrupt") from error
    _check_layout(raw, path)
    config = raw.get("tokenizer_config")
    return TrainingCheckpoint(path=path, step=raw["global_step"], state_dict=raw["state_dict"],
                              tokenizer_config=config if isinstance(config, dict) else None,
                              ema=raw.get("ema"), loss_terms=dict(raw.get("loss_terms") or {}), raw=raw)


def _check_layout(raw: Any, path: Path) -> None:
    """The entries vtok reads have the types it reads them as; anything else is a damaged or foreign file.

    Raises:
        UnreadableCheckpointError: naming the file and the entry.
    """
    def refuse(what: str) -> UnreadableCheckpointError:
        return UnreadableCheckpointError(f"checkpoint {path} is not a vtok training checkpoint: {what}")

    if not isinstance(raw, dict):
        raise refuse(f"it holds a {type(raw).__name__}, not a dict")
    state = raw.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise refuse("no state_dict of named weights")
    step = raw.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise refuse(f"global_step is {step!r}, not a step count")
    ema = raw.get("ema")
    if ema is not None and not (isinstance(ema, dict) and isinstance(ema.get("weights"), dict)
                                and all(isinstance(k, str) for k in ema["weights"])):
        raise refuse("ema is not {decay, updates, weights: {name: tensor}}")
    terms = raw.get("loss_terms")
    if terms is not None and not (isinstance(terms, dict) and all(isinstance(v, dict) for v in terms.values())):
        raise refuse("loss_terms is not {name: record}")
    config = raw.get("tokenizer_config")
    if config is not None and not isinstance(config, dict):
        raise refuse(f"tokenizer_config is a {type(config).__name__}, not a dict")


def tokenizer_from_checkpoint(checkpoint: TrainingCheckpoint, weights: str = "ema") -> tuple[Tokenizer, str]:
    """The tokenizer a training checkpoint holds, in eval mode, with its ``ema`` or ``live`` weights.

    Returns:
        ``(tokenizer, description of the weights used)``.

    Raises:
        InvalidPretrainedError: no ``tokenizer_config``, or it or the weights are malformed or disagree (the same
            checks as ``Tokenizer.from_pretrained``).
    """
    path = checkpoint.path
    if checkpoint.tokenizer_config is None:
        raise InvalidPretrainedError(f"{path} holds no tokenizer_config: it was not written by vtok's trainer")
    check_plain(checkpoint.tokenizer_config, "tokenizer_config")
    check_bounds(checkpoint.tokenizer_config, "tokenizer_config")
    tokenizer, expected = build_checked(Tokenizer, checkpoint.tokenizer_config, path.stat().st_size)
    state, used = checkpoint.tokenizer_weights(weights)
    _check_state(state, expected, path)
    tokenizer.load_state_dict(state, strict=True)
    return tokenizer.eval(), f"{used} weights of {path} (step {checkpoint.step})"


def load_tokenizer(source: str | Path, weights: str = "ema") -> tuple[Tokenizer, str]:
    """A tokenizer from a training checkpoint (``weights``: ``ema`` or ``live``) or an exported folder / repo id.

    Returns:
        ``(tokenizer, description of the weights used)``.

    Raises:
        InvalidPretrainedError: the file is damaged (:class:`UnreadableCheckpointError`), or its config or
            weights are malformed or disagree; ``ValueError`` for a file vtok did not write.
    """
    path = Path(source)
    if path.is_file() and path.suffix == ".ckpt":
        return tokenizer_from_checkpoint(read_checkpoint(path), weights)
    if path.is_file():
        raise ValueError(f"{path}: expected a Lightning .ckpt written by vtok, or an exported folder")
    return load_pretrained(source), f"exported tokenizer {source}"


def _check_state(state: dict, expected: dict, path: Path) -> None:
    """The checkpoint's tensors have exactly the names, shapes and dtypes its config implies."""
    if set(state) != set(expected):
        raise InvalidWeightsError(f"{path}: weights do not fit its tokenizer_config (missing "
                                  f"{sorted(set(expected) - set(state))[:5]}, unexpected "
                                  f"{sorted(set(state) - set(expected))[:5]})")
    for name, tensor in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape or value.dtype != tensor.dtype:
            raise InvalidWeightsError(f"{path}: {name!r} is {getattr(value, 'dtype', type(value))} "
                                      f"{tuple(getattr(value, 'shape', ()))}, its config implies {tensor.dtype} "
                                      f"{tuple(tensor.shape)}")
