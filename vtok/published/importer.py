"""Published tokenizers into vtok: each format's reader gives an ordinary :class:`~vtok.Tokenizer` and a record of
what was mapped and what was deliberately dropped.

Formats:

- ``diffusers``: an ``AutoencoderKL`` / ``VQModel`` folder (SD, SDXL, SD3 VAEs; a pipeline's ``vae/``).
- ``ldm``: an LDM / Stable Diffusion checkpoint (``first_stage_model.*`` inside a whole pipeline's file, or a
  first stage alone): KL or VQ, the network read off the tensors' names and shapes.
- ``taming``: a taming-transformers VQGAN checkpoint (``encoder.*``, ``decoder.*``, ``quantize.*``; its
  discriminator and LPIPS under ``loss.*`` are dropped).
- ``open_magvit2``: an Open-MAGVIT2 Lightning checkpoint (``state_dict``: its CNN, whose names the ``magvit2``
  family keeps; LFQ stores no codebook); its discriminator and LPIPS (``loss.``) are dropped.
- ``titok``: a TiTok folder as its ``PyTorchModelHubMixin`` writes it (``config.json`` with ``model.vq_model``,
  ``model.safetensors``; or ``pytorch_model.bin``), VQ variants: into the ``titok`` family, the two-stage
  recipe's MaskGIT-VQGAN pixel decoder included.
- ``llamagen``: LlamaGen's ``vq_ds16_c2i.pt`` / ``vq_ds8_c2i.pt`` (``model`` or ``ema`` weights; taming's network
  under other container names, l2-normalised codes; its code-use buffer ``quantize.codebook_used`` is dropped).

Lightning checkpoints that kept a weight average (``model_ema.``, LitEma's names: the parameter names without
dots; IBQ's and Open-MAGVIT2's) give it with ``weights="ema"`` and their live weights with ``weights="model"``.
Every tensor of the source is mapped, or dropped by a listed prefix; anything else stops the import with its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from vtok.tokenizers import Tokenizer

from . import diffusers as diffusers_format
from .ldm import CODEBOOK, LayoutError, from_reference, is_bookkeeping
from .pickles import load_pickle, state_dict_of

FORMATS = ("diffusers", "ldm", "taming", "llamagen", "open_magvit2", "titok")
TITOK_SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}  # width, depth, heads


@dataclass
class ImportRecord:
    """What an import read: the source, its format, how many tensors were mapped, and what was dropped (by
    prefix, with counts)."""

    source: str
    format: str
    mapped: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    averaged: int = 0  # tensors taken from the file's weight average instead of its live weights

    def describe(self) -> str:
        dropped = ", ".join(f"{n} under {p!r}" for p, n in self.dropped.items()) or "nothing"
        average = f" ({self.averaged} from its weight average)" if self.averaged else ""
        return f"{self.source} ({self.format}): {self.mapped} tensors mapped{average}; dropped {dropped}"


def from_published(path: str | Path, format: str = "auto", image_size: int | None = None, weights: str = "ema"
                   ) -> tuple[Tokenizer, ImportRecord]:
    """Read a published tokenizer (see the module docstring for the formats) into a vtok tokenizer (eval mode).

    Args:
        path: a folder (diffusers) or a checkpoint file (ldm, taming).
        format: one of :data:`FORMATS`, or ``auto`` (a folder is diffusers; a file with ``first_stage_model.``
            keys is ldm, else taming).
        image_size: the tokenizer's image size (for the checkpoints, which do not record it; default 256);
            their ``attn_resolutions`` are read at this size.
        weights: ``ema`` or ``model``: which saved weights, for files that keep both (LlamaGen's ``ema``, a
            Lightning checkpoint's ``model_ema.``); ``ema`` falls back to ``model`` when the file has no average.

    Raises:
        FileNotFoundError, UnsafePickleError, LayoutError (a tensor left over, missing or of another shape).
    """
    path = Path(path)
    if format == "auto":
        format = _guess_folder_format(path) if path.is_dir() else _guess_checkpoint_format(path)
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {['auto', *FORMATS]}")
    record = ImportRecord(str(path), format)
    if format == "diffusers":
        config, reference = diffusers_format.read_folder(path)
        tokenizer_config = diffusers_format.tokenizer_config(config)
    elif format == "llamagen":
        checkpoint = load_pickle(path)
        key = "ema" if weights == "ema" and isinstance(checkpoint, dict) and "ema" in checkpoint else "model"
        reference = from_llamagen(state_dict_of(checkpoint, (key,)), record)
        tokenizer_config = infer_ldm_config(reference, image_size or 256, l2_normalize=True)
    elif format == "titok":
        config, state = read_titok_folder(path)
        tokenizer = Tokenizer(**titok_config(config))
        renamed = {_titok_name(k): v for k, v in state.items()}
        tokenizer.load_state_dict(from_own_names(tokenizer, renamed))
        record.mapped = len(state)
        return tokenizer.eval(), record
    elif format == "open_magvit2":
        state = _average_or_live(_first_stage(state_dict_of(load_pickle(path)), record), weights, record)
        tokenizer = Tokenizer(**infer_magvit2_config(state, image_size or 256))
        tokenizer.load_state_dict(from_own_names(tokenizer, state, skip_is_nin_shortcut=True))
        record.mapped = len(state)
        return tokenizer.eval(), record
    else:
        state = state_dict_of(load_pickle(path))
        reference = _average_or_live(_first_stage(state, record), weights, record)
        tokenizer_config = infer_ldm_config(reference, image_size or 256)
    tokenizer = Tokenizer(**tokenizer_config)
    tokenizer.load_state_dict(from_reference(tokenizer, reference))
    record.mapped = len(reference)
    return tokenizer.eval(), record


def _average_or_live(state: dict[str, Tensor], weights: str, record: ImportRecord) -> dict[str, Tensor]:
    """A Lightning checkpoint's live weights, or (``weights="ema"``) its LitEma average in their place: LitEma
    keeps one buffer per trained parameter under ``model_ema.`` + the name without dots, and its own
    ``decay`` / ``num_updates``. What is not used is counted as dropped."""
    average = {k[len("model_ema."):]: v for k, v in state.items() if k.startswith("model_ema.")}
    live = {k: v for k, v in state.items() if not k.startswith("model_ema.")}
    if not average:
        return live
    used = 0
    if weights == "ema":
        for name in live:
            flat = name.replace(".", "")
            if flat in average:
                live[name] = average.pop(flat)
                used += 1
    record.dropped["model_ema."] = len(average)
    record.averaged = used
    return live


def infer_magvit2_config(state: dict[str, Tensor], image_size: int = 256) -> dict[str, Any]:
    """The vtok config of an Open-MAGVIT2 CNN + LFQ, read off its tensors.

    Raises:
        LayoutError: the names are not Open-MAGVIT2's.
    """
    if "encoder.conv_in.weight" not in state or "decoder.adaptive.0.gamma.weight" not in state:
        raise LayoutError("not an Open-MAGVIT2 checkpoint: no encoder.conv_in / decoder.adaptive")
    levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    blocks = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    ch = state["encoder.conv_in.weight"].shape[0]
    widths = [state[f"encoder.down.{i}.block.{blocks - 1}.conv2.weight"].shape[0] for i in range(levels)]
    trunk = {"kind": "magvit2", "channels": ch, "channel_mult": [w // ch for w in widths], "num_res_blocks": blocks}
    bits = state["encoder.conv_out.weight"].shape[0]
    return {"encoder": {**trunk, "in_channels": state["encoder.conv_in.weight"].shape[1], "out_dim": bits},
            "quantizer": {"kind": "lfq", "bits": bits, "commitment_weight": 0.25, "entropy_weight": 0.1},
            "decoder": {**trunk, "out_channels": state["decoder.conv_out.weight"].shape[0]},
            "image_size": image_size}


def from_own_names(tokenizer: Tokenizer, state: dict[str, Tensor], skip_is_nin_shortcut: bool = False
                   ) -> dict[str, Tensor]:
    """A state dict for a family that keeps its reference's names (``magvit2``, ``titok``); with
    ``skip_is_nin_shortcut`` (``magvit2``, built from vtok's residual block) ``nin_shortcut`` is vtok's ``skip``.

    Raises:
        LayoutError: a tensor missing, left over, or of another shape (named).
    """
    renamed = {k.replace(".nin_shortcut.", ".skip.") if skip_is_nin_shortcut else k: v for k, v in state.items()}
    own = tokenizer.state_dict()
    missing = [k for k in own if k not in renamed and not is_bookkeeping(k)]
    extra = [k for k in renamed if k not in own]
    if missing or extra:
        raise LayoutError(f"the published weights lack {missing[:5]} and have no place for {extra[:5]}")
    for name, value in renamed.items():
        if value.shape != own[name].shape:
            raise LayoutError(f"{name}: shape {tuple(value.shape)}, the network's is {tuple(own[name].shape)}")
    return {**{k: v for k, v in own.items() if k not in renamed}, **renamed}


def _guess_folder_format(path: Path) -> str:
    import json

    config = path / "config.json"
    if config.is_file() and "vq_model" in (json.loads(config.read_text()).get("model") or {}):
        return "titok"
    return "diffusers"


def read_titok_folder(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state dict)`` of a TiTok folder (``config.json`` + ``model.safetensors`` or, read through the
    pickle allowlist, ``pytorch_model.bin``).

    Raises:
        FileNotFoundError: neither weights file is there.
    """
    import json

    config = json.loads((path / "config.json").read_text())
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return config, load_file(str(path / "model.safetensors"))
    if (path / "pytorch_model.bin").is_file():
        return config, state_dict_of(load_pickle(path / "pytorch_model.bin"))
    raise FileNotFoundError(f"{path} has config.json but no model.safetensors or pytorch_model.bin")


def titok_config(config: dict[str, Any]) -> dict[str, Any]:
    """A vtok config for a TiTok ``config.json`` (``model.vq_model``, ``dataset.preprocessing.crop_size``).

    Raises:
        LayoutError: a variant vtok does not read (its VAE, or a model size it does not know).
    """
    vq = config["model"]["vq_model"]
    if vq.get("quantize_mode", "vq") != "vq":
        raise LayoutError(f"TiTok's quantize_mode={vq['quantize_mode']!r} (its VAE variants) is not supported: VQ only")
    sizes = {}
    for role in ("enc", "dec"):
        size = vq[f"vit_{role}_model_size"]
        if size not in TITOK_SIZES:
            raise LayoutError(f"vit_{role}_model_size={size!r}: TiTok's sizes are {list(TITOK_SIZES)}")
        sizes[role] = dict(zip(("width", "depth", "heads"), TITOK_SIZES[size]))
    image_size = int(config.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256))
    tokens, legacy = int(vq["num_latent_tokens"]), bool(vq.get("is_legacy", True))
    two_stage = bool(vq.get("finetune_decoder", True))
    return {"encoder": {"kind": "titok", "image_size": image_size, "patch_size": int(vq["vit_enc_patch_size"]),
                        "num_tokens": tokens, "out_dim": int(vq["token_size"]), "legacy": legacy, **sizes["enc"]},
            "quantizer": {"kind": "vq", "codebook_size": int(vq["codebook_size"]),
                          "codebook_dim": int(vq["token_size"]), "l2_normalize": bool(vq.get("use_l2_norm", False)),
                          "commitment_weight": float(vq.get("commitment_cost", 0.25)), "data_init": False},
            "decoder": {"kind": "titok", "image_size": image_size, "patch_size": int(vq["vit_dec_patch_size"]),
                        "num_tokens": tokens, "pixel_decoder": "maskgit_vqgan" if two_stage else "rgb",
                        **sizes["dec"]},
            "image_size": image_size}


def _titok_name(name: str) -> str:
    """TiTok's top-level names -> the family's: the latent tokens live in the encoder, the codebook is the
    quantizer's, the two-stage pixel decoder and its codebook are the decoder's."""
    if name == "latent_tokens":
        return "encoder.latent_tokens"
    if name == "quantize.embedding.weight":
        return "quantizer.codebook"
    return f"decoder.{name}" if name.startswith(("pixel_quantize.", "pixel_decoder.")) else name


def _guess_checkpoint_format(path: Path) -> str:
    checkpoint = load_pickle(path)
    if isinstance(checkpoint, dict) and "model" in checkpoint and "state_dict" not in checkpoint:
        return "llamagen"
    state = state_dict_of(checkpoint)
    if "decoder.adaptive.0.gamma.weight" in state:
        return "open_magvit2"
    return "ldm" if any(k.startswith("first_stage_model.") for k in state) else "taming"


def from_llamagen(state: dict[str, Tensor], record: ImportRecord) -> dict[str, Tensor]:
    """LlamaGen's names -> the reference layout: ``conv_blocks.{i}.res.{j}`` / ``attn.{j}`` are level ``i``'s
    blocks (the decoder's levels counted from the lowest resolution), ``mid.0 / 1 / 2`` are ``block_1``,
    ``attn_1``, ``block_2``."""
    levels = {role: 1 + max((int(m[1]) for k in state if (m := re.match(rf"{role}\.conv_blocks\.(\d+)\.", k))),
                            default=-1) for role in ("encoder", "decoder")}
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if name == "quantize.codebook_used":  # a record of recently used codes, not a weight
            record.dropped[name] = record.dropped.get(name, 0) + 1
            continue
        renamed = re.sub(r"^(\w+coder)\.mid\.([012])\.",
                         lambda m: f"{m[1]}.mid.{('block_1', 'attn_1', 'block_2')[int(m[2])]}.", name)
        found = re.match(r"^(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)(.*)$", renamed)
        if found:
            role, level, kind, rest = found[1], int(found[2]), found[3], found[4]
            level = level if role == "encoder" else levels[role] - 1 - level
            kind = {"res": "block"}.get(kind, kind)
            renamed = f"{role}.{'down' if role == 'encoder' else 'up'}.{level}.{kind}{rest}"
        out[renamed] = value
    return out


def _first_stage(state: dict[str, Tensor], record: ImportRecord) -> dict[str, Tensor]:
    """The tokenizer's tensors of an LDM / taming state dict (prefix removed); the rest counted as dropped: a
    whole pipeline's other models (``model.``, ``model_ema.``, ``cond_stage_model.``) and the training loss's
    discriminator and LPIPS (``loss.``)."""
    prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in state) else ""
    kept: dict[str, Tensor] = {}
    for name, value in state.items():
        if prefix and not name.startswith(prefix):
            dropped = name.split(".", 1)[0] + "."
        elif name[len(prefix):].startswith("loss."):
            dropped = prefix + "loss."
        else:
            kept[name[len(prefix):]] = value
            continue
        record.dropped[dropped] = record.dropped.get(dropped, 0) + 1
    return kept


def infer_ldm_config(state: dict[str, Tensor], image_size: int = 256, l2_normalize: bool = False
                     ) -> dict[str, Any]:
    """The vtok config of an LDM / taming first stage, read off its tensors: widths from the convolutions,
    residual blocks and attention levels from the names, latent and code sizes from ``quant_conv`` and the
    codebook (``quantize.embedding.weight`` present: VQ; absent: KL with ``2 x`` channels before the Gaussian);
    ``l2_normalize`` for codebooks looked up by cosine (LlamaGen's).

    Raises:
        LayoutError: the names are not an LDM / taming first stage.
    """
    if "encoder.conv_in.weight" not in state or "decoder.conv_out.weight" not in state:
        raise LayoutError("not an LDM / taming first stage: no encoder.conv_in / decoder.conv_out "
                          f"(it has {sorted(state)[:5]})")
    levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    blocks = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    ch = state["encoder.conv_in.weight"].shape[0]
    widths = [state[f"encoder.down.{i}.block.{blocks - 1}.conv2.weight"].shape[0] for i in range(levels)]
    attn = {role: [image_size // 2**i for i in range(levels) if f"{role}.{name}.{i}.attn.0.q.weight" in state]
            for role, name in (("encoder", "down"), ("decoder", "up"))}
    vq = CODEBOOK in state
    z_out = state["encoder.conv_out.weight"].shape[0]
    embed = state["quant_conv.weight"].shape[0] if "quant_conv.weight" in state else z_out
    common = {"kind": "conv", "channels": ch, "channel_mult": [w // ch for w in widths], "num_res_blocks": blocks,
              "attention": "encoder.mid.attn_1.q.weight" in state, "resolution": image_size,
              "mid_blocks": 2 if "encoder.mid.block_2.conv1.weight" in state else 1,
              "norm_groups": 32}
    has_quant = "quant_conv.weight" in state
    z = z_out // (1 if vq else 2)
    encoder = {**common, "in_channels": state["encoder.conv_in.weight"].shape[1], "downsample_padding": "bottom_right",
               "attn_resolutions": attn["encoder"], "out_dim": embed,
               **({"z_channels": z, "double_z": not vq} if has_quant else {})}
    decoder = {**common, "out_channels": state["decoder.conv_out.weight"].shape[0], "attn_resolutions": attn["decoder"],
               **({"z_channels": state["decoder.conv_in.weight"].shape[1]} if "post_quant_conv.weight" in state
                  else {})}
    if vq:
        codes = state[CODEBOOK]
        quantizer: dict[str, Any] = {"kind": "vq", "codebook_size": codes.shape[0], "codebook_dim": codes.shape[1],
                                     "l2_normalize": l2_normalize, "commitment_weight": 0.25, "data_init": False}
    else:
        quantizer = {"kind": "gaussian", "latent_dim": embed // 2}
    return {"encoder": encoder, "quantizer": quantizer, "decoder": decoder, "image_size": image_size,
            **({"scaling_factor": 0.18215} if not vq else {})}
