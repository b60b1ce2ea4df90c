"""The LLM bridge beside an exported tokenizer: ``llm_bridge/bridge.json`` (plain data naming the LLM) and
``llm_bridge/model.safetensors`` (an ETT bridge's projector and markers, or an image vocabulary's new rows, and the
LLM's trained weights: LoRA adapters or, when fully trained, all of them). A frozen LLM is not copied:
``bridge.json`` names where it comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vtok.checkpoint import TrainingCheckpoint, load_tokenizer, read_checkpoint, tokenizer_from_checkpoint
from vtok.tokenizers import Tokenizer
from vtok.tokenizers.safetensors_header import read_header
from vtok.tokenizers.serialization import UnsafeConfigError, check_plain, check_regular_file, read_config

from .bridge import ImageToText
from .vocabulary import ImageVocabulary

BRIDGE_DIR, CONFIG_NAME, WEIGHTS_NAME = "llm_bridge", "bridge.json", "model.safetensors"
FORMAT = "vtok-llm-bridge"
FILE_KEYS = ("source", "gguf_file")  # values that are paths or file names, not import paths


# a term's record kind -> the attribute its bridge module lives under in the term's state
BRIDGE_KINDS = {"llm_caption": "bridge.", "llm_vocabulary": "vocabulary."}


def bridge_from_checkpoint(checkpoint: TrainingCheckpoint, kind: str | None = None
                           ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(record, state)`` of the LLM term a training checkpoint holds (an ETT caption term or a vocabulary term;
    ``kind`` picks one), or ``None`` when it has none."""
    for name, record in checkpoint.loss_terms.items():
        if record.get("kind") in BRIDGE_KINDS and kind in (None, record.get("kind")):
            prefix = BRIDGE_KINDS[record["kind"]]
            state = {k[len(prefix):]: v for k, v in checkpoint.term_state(name).items() if k.startswith(prefix)}
            return record, state
    return None


def save_bridge(out_dir: str | Path, record: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write ``out_dir/llm_bridge/``; returns that folder."""
    from safetensors.torch import save_file

    folder = Path(out_dir) / BRIDGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": 1, **record}
    check_plain(config, "bridge", FILE_KEYS)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / WEIGHTS_NAME))
    return folder


def build_bridge(record: dict[str, Any], state: dict[str, torch.Tensor]) -> ImageToText | ImageVocabulary:
    """An :class:`ImageToText` (``kind`` ``llm_caption``) or :class:`ImageVocabulary` (``llm_vocabulary``) from a
    record (``checkpoint_record``) and its saved weights, in eval mode."""
    if record.get("kind") == "llm_vocabulary":
        module: ImageToText | ImageVocabulary = ImageVocabulary(int(record["codebook_size"]), **record["llm"])
        own = ("input_rows", "output_rows")
    else:
        module = ImageToText(int(record["in_dim"]), **record["llm"])
        own = ("projector.", "markers")
    missing, unexpected = module.load_state_dict(state, strict=False)  # a frozen LLM is reloaded, not saved
    required = [k for k in missing if k.startswith(own)]
    if required or unexpected:
        raise ValueError(f"the saved bridge does not fit its settings: missing {required[:5]}, unexpected "
                         f"{unexpected[:5]}")
    return module.eval()


def load_bridge(folder: str | Path) -> tuple[ImageToText | ImageVocabulary, dict[str, Any]]:
    """The bridge exported beside a tokenizer (``folder`` or ``folder/llm_bridge``) and its record.

    Raises:
        FileNotFoundError: no bridge there.
        UnsafeConfigError: ``bridge.json`` is not a vtok bridge or holds more than plain data.
        InvalidPretrainedError: a file that is not a regular file, a config past vtok's bounds, a malformed
            weights header.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    folder = folder / BRIDGE_DIR if (folder / BRIDGE_DIR).is_dir() else folder
    if not (folder / CONFIG_NAME).exists():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME}: export an ETT run with vtok-export")
    check_regular_file(folder / CONFIG_NAME)
    record = read_config(folder / CONFIG_NAME)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UnsafeConfigError(f"{folder / CONFIG_NAME} is not a vtok LLM bridge")
    check_plain(record, "bridge", FILE_KEYS)
    record = {k: v for k, v in record.items() if k not in ("format", "format_version")}
    check_regular_file(folder / WEIGHTS_NAME)
    read_header(folder / WEIGHTS_NAME)  # offsets, dtypes and size checked before anything is read
    return build_bridge(record, load_file(str(folder / WEIGHTS_NAME))), record


def load_with_bridge(source: str | Path, kind: str, weights: str
                     ) -> tuple[Tokenizer, ImageToText | ImageVocabulary, dict[str, Any]]:
    """``(tokenizer, bridge, record)`` from a run's checkpoint (``.ckpt``: its LLM term of record ``kind``) or a
    folder exported with ``vtok-export`` (tokenizer + ``llm_bridge/``).

    Raises:
        ValueError: the checkpoint holds no LLM term of that kind.
    """
    path = Path(source)
    if path.suffix == ".ckpt":
        checkpoint = read_checkpoint(path)
        found = bridge_from_checkpoint(checkpoint, kind)
        if found is None:
            raise ValueError(f"{path} holds no LLM term of kind {kind!r} (llm_caption: an ETT run; llm_vocabulary: "
                             "experiment=llm_vocabulary)")
        record, state = found
        return tokenizer_from_checkpoint(checkpoint, weights)[0], build_bridge(record, state), record
    bridge, record = load_bridge(path)
    return load_tokenizer(path, weights=weights)[0], bridge, record
