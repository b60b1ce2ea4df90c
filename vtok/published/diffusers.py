"""diffusers' ``AutoencoderKL`` and ``VQModel`` folders, read and written without importing diffusers.

A folder is ``config.json`` (``_class_name`` and the constructor's keys) and ``diffusion_pytorch_model.safetensors``.
Its names are the reference layout (:mod:`vtok.published.ldm`) renamed: ``down.{i}.block.{j}`` is
``down_blocks.{i}.resnets.{j}``, ``down.{i}.attn.{j}`` is ``down_blocks.{i}.attentions.{j}`` (``group_norm``,
``to_q``, ``to_k``, ``to_v``, ``to_out.0`` as linear layers), ``mid.block_1`` / ``mid.attn_1`` / ``mid.block_2`` are
``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``, decoder level ``i`` of ``L`` is ``up_blocks.{L-1-i}``,
``norm_out`` is ``conv_norm_out``, ``nin_shortcut`` is ``conv_shortcut``.

What maps: ``DownEncoderBlock2D`` / ``AttnDownEncoderBlock2D`` and their decoder twins, mid-block attention on or
off, any ``norm_num_groups``, ``use_quant_conv`` / ``use_post_quant_conv``, ``scaling_factor`` / ``shift_factor``.
What does not, and is refused with the reason: activations other than SiLU, MoVQ's spatially conditioned decoder
norms (``norm_type: spatial``, Kandinsky), widths that are not multiples of the first, per-channel
``latents_mean`` / ``latents_std``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from .ldm import LayoutError

CONFIG_NAME, WEIGHTS_NAME = "config.json", "diffusion_pytorch_model.safetensors"
CLASSES = ("AutoencoderKL", "VQModel")
DIFFUSERS_VERSION = "0.42.1"  # the version whose loading the tests check
_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def to_diffusers_name(name: str, levels: int) -> str:
    """A reference-layout name -> its diffusers name (``levels``: resolution levels of the network)."""
    rules = [
        (r"^(encoder)\.down\.(\d+)\.block\.(\d+)\.(\w+)\.", lambda m: f"{m[1]}.down_blocks.{m[2]}.resnets.{m[3]}."
                                                                       f"{_RESNET.get(m[4], m[4])}."),
        (r"^(encoder)\.down\.(\d+)\.attn\.(\d+)\.(\w+)\.", lambda m: f"{m[1]}.down_blocks.{m[2]}.attentions.{m[3]}."
                                                                      f"{_ATTENTION[m[4]]}."),
        (r"^(encoder)\.down\.(\d+)\.downsample\.conv\.",
         lambda m: f"{m[1]}.down_blocks.{m[2]}.downsamplers.0.conv."),
        (r"^(decoder)\.up\.(\d+)\.block\.(\d+)\.(\w+)\.",
         lambda m: f"{m[1]}.up_blocks.{levels - 1 - int(m[2])}.resnets.{m[3]}.{_RESNET.get(m[4], m[4])}."),
        (r"^(decoder)\.up\.(\d+)\.attn\.(\d+)\.(\w+)\.", lambda m: f"{m[1]}.up_blocks.{levels - 1 - int(m[2])}."
                                                                    f"attentions.{m[3]}.{_ATTENTION[m[4]]}."),
        (r"^(decoder)\.up\.(\d+)\.upsample\.conv\.", lambda m: f"{m[1]}.up_blocks.{levels - 1 - int(m[2])}."
                                                                "upsamplers.0.conv."),
        (r"^(\w+coder)\.mid\.block_(\d)\.(\w+)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."
                                                              f"{_RESNET.get(m[3], m[3])}."),
        (r"^(\w+coder)\.mid\.attn_1\.(\w+)\.", lambda m: f"{m[1]}.mid_block.attentions.0.{_ATTENTION[m[2]]}."),
        (r"^(\w+coder)\.norm_out\.", lambda m: f"{m[1]}.conv_norm_out."),
    ]
    for pattern, replace in rules:
        renamed, count = re.subn(pattern, replace, name)
        if count:
            return renamed
    return name


def is_linear(diffusers_name: str) -> bool:
    """Attention projections are linear layers in diffusers (1x1 convolutions in the reference layout)."""
    return (".attentions." in diffusers_name and diffusers_name.endswith(".weight")
            and "group_norm" not in diffusers_name)


def tokenizer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A vtok tokenizer config (plus ``scaling_factor`` / ``shift_factor``) for a diffusers ``config.json``.

    Raises:
        LayoutError: the class or a setting has no vtok counterpart (named).
    """
    kind = config.get("_class_name")
    if kind not in CLASSES:
        raise LayoutError(f"diffusers class {kind!r}: vtok reads {list(CLASSES)}")
    if config.get("act_fn", "silu") != "silu":
        raise LayoutError(f"act_fn={config['act_fn']!r}: vtok's conv family uses SiLU")
    if config.get("norm_type", "group") != "group":
        raise LayoutError(f"norm_type={config['norm_type']!r} (MoVQ's spatially conditioned decoder norms) has no "
                          "vtok counterpart")
    if config.get("latents_mean") is not None or config.get("latents_std") is not None:
        raise LayoutError("per-channel latents_mean / latents_std are not supported; scaling_factor and "
                          "shift_factor are")
    widths = [int(w) for w in config.get("block_out_channels", (64,))]
    if any(w % widths[0] for w in widths):
        raise LayoutError(f"block_out_channels={widths}: vtok widths are multiples of the first")
    levels = len(widths)
    down = list(config.get("down_block_types", ("DownEncoderBlock2D",) * levels))
    up = list(config.get("up_block_types", ("UpDecoderBlock2D",) * levels))
    for name in (*down, *up):
        if name not in ("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D"):
            raise LayoutError(f"block type {name!r} has no vtok counterpart")
    sample = config.get("sample_size", 256)
    sample = int(sample[0] if isinstance(sample, (list, tuple)) else sample)
    resolution = sample if sample >= 2 ** (levels - 1) else 2 ** (levels + 4)
    latent = int(config.get("latent_channels", 4))
    common = {"kind": "conv", "channels": widths[0], "channel_mult": [w // widths[0] for w in widths],
              "num_res_blocks": int(config.get("layers_per_block", 1)), "resolution": resolution,
              "attention": bool(config.get("mid_block_add_attention", True)), "mid_blocks": 2,
              "norm_groups": int(config.get("norm_num_groups", 32))}
    encoder_attn = [resolution // 2**i for i, t in enumerate(down) if t.startswith("Attn")]
    decoder_attn = [resolution // 2 ** (levels - 1 - i) for i, t in enumerate(up) if t.startswith("Attn")]
    encoder = {**common, "in_channels": int(config.get("in_channels", 3)), "downsample_padding": "bottom_right",
               "attn_resolutions": encoder_attn}
    decoder = {**common, "out_channels": int(config.get("out_channels", 3)), "attn_resolutions": decoder_attn}
    if kind == "AutoencoderKL":
        quant, post_quant = config.get("use_quant_conv", True), config.get("use_post_quant_conv", True)
        encoder.update(out_dim=2 * latent, **({"z_channels": latent, "double_z": True} if quant else {}))
        decoder.update({"z_channels": latent} if post_quant else {})
        quantizer: dict[str, Any] = {"kind": "gaussian", "latent_dim": latent}
    else:
        embed = int(config.get("vq_embed_dim") or latent)
        encoder.update(out_dim=embed, z_channels=latent)
        decoder.update(z_channels=latent)
        quantizer = {"kind": "vq", "codebook_size": int(config.get("num_vq_embeddings", 256)), "codebook_dim": embed,
                     "l2_normalize": False, "commitment_weight": 0.25, "data_init": False}
    return {"encoder": encoder, "quantizer": quantizer, "decoder": decoder, "image_size": sample,
            "scaling_factor": float(config.get("scaling_factor", 1.0)),
            "shift_factor": float(config.get("shift_factor") or 0.0)}


def diffusers_config(tokenizer: Any) -> dict[str, Any]:
    """The ``config.json`` of the diffusers class that holds ``tokenizer`` (a conv tokenizer in the reference
    layout whose encoder and decoder share widths, depth, norm groups and mid-block attention).

    Raises:
        LayoutError: naming what diffusers cannot express.
    """
    from .ldm import check_reference_tokenizer

    check_reference_tokenizer(tokenizer)
    config = tokenizer.config
    encoder, decoder, quantizer = config["encoder"], config["decoder"], config["quantizer"]
    for key in ("channels", "channel_mult", "num_res_blocks", "norm_groups", "attention", "mid_blocks"):
        if _option(encoder, key) != _option(decoder, key):
            raise LayoutError(f"encoder.{key}={_option(encoder, key)!r} but decoder.{key}={_option(decoder, key)!r}: "
                              "diffusers' models have one value for both")
    if (_option(encoder, "mid_blocks") or (2 if _option(encoder, "attention") else 1)) != 2:
        raise LayoutError("diffusers' middle block has two residual blocks: set mid_blocks=2")
    levels = len(_option(encoder, "channel_mult"))
    resolution = _option(encoder, "resolution")
    widths = [_option(encoder, "channels") * m for m in _option(encoder, "channel_mult")]
    down = ["AttnDownEncoderBlock2D" if resolution // 2**i in _option(encoder, "attn_resolutions")
            else "DownEncoderBlock2D" for i in range(levels)]
    up = ["AttnUpDecoderBlock2D" if resolution // 2 ** (levels - 1 - i) in _option(decoder, "attn_resolutions")
          else "UpDecoderBlock2D" for i in range(levels)]
    out = {"_diffusers_version": DIFFUSERS_VERSION, "in_channels": _option(encoder, "in_channels"),
           "out_channels": _option(decoder, "out_channels"), "down_block_types": down, "up_block_types": up,
           "block_out_channels": widths, "layers_per_block": _option(encoder, "num_res_blocks"), "act_fn": "silu",
           "norm_num_groups": _option(encoder, "norm_groups"), "sample_size": config["image_size"],
           "scaling_factor": config.get("scaling_factor", 1.0),
           "mid_block_add_attention": _option(encoder, "attention")}
    if quantizer["kind"] == "gaussian":
        latent = tokenizer.quantizer.latent_dim
        quant = encoder.get("z_channels") is not None
        if (quant and encoder["z_channels"] != latent) or decoder.get("z_channels") not in (None, latent):
            raise LayoutError("AutoencoderKL's quant convs keep latent_channels: z_channels must equal the latent")
        out.update(_class_name="AutoencoderKL", latent_channels=latent, use_quant_conv=quant,
                   use_post_quant_conv=decoder.get("z_channels") is not None, force_upcast=True,
                   shift_factor=config.get("shift_factor") or None)
    else:
        if quantizer.get("l2_normalize", True):
            raise LayoutError("diffusers' VQModel looks codes up by euclidean distance: an l2-normalised codebook "
                              "(cosine lookup) would give other codes")
        z = encoder.get("z_channels")
        if z is None or decoder.get("z_channels") != z:
            raise LayoutError("VQModel always has quant_conv and post_quant_conv: set z_channels on both")
        out.update(_class_name="VQModel", latent_channels=z, num_vq_embeddings=tokenizer.quantizer.codebook_size,
                   vq_embed_dim=tokenizer.quantizer.codebook_dim, norm_type="group", lookup_from_codebook=False,
                   force_upcast=False)
    return out


def read_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state dict in the reference layout)`` of a diffusers folder (``vae/`` of a pipeline too).

    Raises:
        FileNotFoundError: no ``config.json`` / weights there; :class:`LayoutError` for other classes.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    folder = folder / "vae" if not (folder / CONFIG_NAME).is_file() and (folder / "vae" / CONFIG_NAME).is_file() \
        else folder
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers model folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
    config = json.loads((folder / CONFIG_NAME).read_text())
    levels = len(config.get("block_out_channels", (64,)))
    renamed = {from_diffusers_name(k, levels): v for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
    return config, renamed


def from_diffusers_name(name: str, levels: int) -> str:
    """A diffusers name -> the reference-layout name (the inverse of :func:`to_diffusers_name`)."""
    resnet = {v: k for k, v in _RESNET.items()}
    attention = {v: k for k, v in _ATTENTION.items()}
    level = {"encoder": lambda i: int(i), "decoder": lambda i: levels - 1 - int(i)}
    rules = [
        (r"^(\w+coder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.",
         lambda m: f"{m[1]}.{m[2]}.{level[m[1]](m[3])}.block.{m[4]}.{resnet.get(m[5], m[5])}."),
        (r"^(\w+coder)\.(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
         lambda m: f"{m[1]}.{m[2]}.{level[m[1]](m[3])}.attn.{m[4]}.{attention[m[5]]}."),
        (r"^(\w+coder)\.(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.",
         lambda m: f"{m[1]}.{m[2]}.{level[m[1]](m[3])}.{m[4]}sample.conv."),
        (r"^(\w+coder)\.mid_block\.resnets\.(\d)\.(\w+)\.",
         lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet.get(m[3], m[3])}."),
        (r"^(\w+coder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
         lambda m: f"{m[1]}.mid.attn_1.{attention[m[2]]}."),
        (r"^(\w+coder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
    ]
    for pattern, replace in rules:
        renamed, count = re.subn(pattern, replace, name)
        if count:
            return renamed
    return name


def _option(part: Mapping[str, Any], key: str) -> Any:
    """A conv part's setting, with ConvEncoder / ConvDecoder's defaults."""
    defaults = {"channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attention": True,
                "norm_groups": 32, "resolution": 256, "attn_resolutions": [], "in_channels": 3, "out_channels": 3}
    value = part.get(key, defaults.get(key))
    return list(value) if isinstance(value, (list, tuple)) else value


def write_folder(tokenizer: Any, out_dir: str | Path) -> Path:
    """Write ``tokenizer`` as a diffusers folder that ``AutoencoderKL`` / ``VQModel.from_pretrained`` load.

    Raises:
        LayoutError: naming what diffusers cannot express (see :func:`diffusers_config`).
    """
    from safetensors.torch import save_file

    from .ldm import to_reference

    config = diffusers_config(tokenizer)
    levels = len(config["block_out_channels"])
    state = {}
    for name, value in to_reference(tokenizer).items():
        renamed = to_diffusers_name(name, levels)
        state[renamed] = (value.reshape(value.shape[:2]) if is_linear(renamed) else value).detach().contiguous().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out
