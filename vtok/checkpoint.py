"""Read a tokenizer out of a vtok training checkpoint (``.ckpt``), or out of an exported folder, with one call.

Needs torch, safetensors and vtok: no Lightning. A checkpoint is read with ``weights_only=True`` (tensors and
plain types only), so reading one never runs code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vtok.tokenizers import Tokenizer
from vtok.tokenizers.serialization import load_pretrained


def load_tokenizer(source: str | Path, weights: str = "ema") -> tuple[Tokenizer, str]:
    """A tokenizer from a Lightning checkpoint (``weights``: ``ema`` or ``live``) or an exported folder / repo id.

    Returns:
        ``(tokenizer, description of the weights used)``.
    """
    path = Path(source)
    if path.is_file() and path.suffix == ".ckpt":
        # Our own training checkpoints: tensors and plain types only (weights_only refuses anything else).
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if "tokenizer_config" not in checkpoint:
            raise ValueError(f"{path} holds no tokenizer_config: it was not written by vtok's trainer")
        tokenizer = Tokenizer(**checkpoint["tokenizer_config"])
        if weights == "ema" and "ema" in checkpoint:
            state, used = checkpoint["ema"]["weights"], "ema"
        elif weights in ("ema", "live"):
            prefix = "tokenizer."
            state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
            used = "live" if weights == "live" else "live (the checkpoint kept no EMA)"
        else:
            raise ValueError(f"weights={weights!r}: use ema or live")
        tokenizer.load_state_dict(state, strict=True)
        return tokenizer.eval(), f"{used} weights of {path} (step {checkpoint.get('global_step')})"
    if path.is_file():
        raise ValueError(f"{path}: expected a Lightning .ckpt written by vtok, or an exported folder")
    return load_pretrained(source), f"exported tokenizer {source}"
