"""Read a tokenizer out of a vtok training checkpoint (``.ckpt``), or out of an exported folder, with one call.

Needs torch, safetensors and vtok: no Lightning. A checkpoint is read with ``weights_only=True`` (tensors and
plain types only), so reading one never runs code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vtok.tokenizers import Tokenizer
from vtok.tokenizers.errors import InvalidPretrainedError, InvalidWeightsError
from vtok.tokenizers.serialization import build_checked, check_bounds, check_plain, load_pretrained


def load_tokenizer(source: str | Path, weights: str = "ema") -> tuple[Tokenizer, str]:
    """A tokenizer from a Lightning checkpoint (``weights``: ``ema`` or ``live``) or an exported folder / repo id.

    Returns:
        ``(tokenizer, description of the weights used)``.

    Raises:
        InvalidPretrainedError: the checkpoint's ``tokenizer_config`` or weights are malformed or disagree (the same
            checks as ``Tokenizer.from_pretrained``); ``ValueError`` for a file vtok did not write.
    """
    path = Path(source)
    if path.is_file() and path.suffix == ".ckpt":
        # Our own training checkpoints: tensors and plain types only (weights_only refuses anything else).
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # truncated, corrupt or not a torch file
            raise InvalidPretrainedError(f"{path} cannot be read ({type(error).__name__}): truncated or "
                                         "corrupt") from error
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("tokenizer_config"), dict):
            raise ValueError(f"{path} holds no tokenizer_config: it was not written by vtok's trainer")
        check_plain(checkpoint["tokenizer_config"], "tokenizer_config")
        check_bounds(checkpoint["tokenizer_config"], "tokenizer_config")
        tokenizer, expected = build_checked(Tokenizer, checkpoint["tokenizer_config"], path.stat().st_size)
        if weights == "ema" and "ema" in checkpoint:
            state, used = checkpoint["ema"]["weights"], "ema"
        elif weights in ("ema", "live"):
            prefix = "tokenizer."
            state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
            used = "live" if weights == "live" else "live (the checkpoint kept no EMA)"
        else:
            raise ValueError(f"weights={weights!r}: use ema or live")
        _check_state(state, expected, path)
        tokenizer.load_state_dict(state, strict=True)
        return tokenizer.eval(), f"{used} weights of {path} (step {checkpoint.get('global_step')})"
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
