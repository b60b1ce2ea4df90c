"""The reference layout of the conv family: taming's VQGAN, LDM / Stable Diffusion first stages (and diffusers,
renamed).

A vtok conv tokenizer built with the reference options (``attn_resolutions``, ``downsample_padding=bottom_right``,
``z_channels``, mid-block attention) has the same layers as those networks; each encoder and decoder records the
reference name of every layer (``reference_names``), and this module maps whole state dicts both ways:

- residual blocks: ``norm1 conv1 norm2 conv2`` as they are, vtok's ``skip`` is ``nin_shortcut``;
- attention: vtok's one ``qkv`` 1x1 conv is the references' ``q``, ``k``, ``v`` stacked; ``proj`` is ``proj_out``;
- ``encoder.quant_conv`` / ``decoder.post_quant_conv`` are the top-level ``quant_conv`` / ``post_quant_conv``;
- a VQ codebook is ``quantize.embedding.weight`` (a Gaussian bottleneck has no weights).

Every tensor is mapped or the mapping stops with :class:`LayoutError` naming what is left over or missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from vtok.tokenizers.errors import InvalidWeightsError

BLOCK_RENAMES = {"skip": "nin_shortcut", "proj": "proj_out"}
CODEBOOK = "quantize.embedding.weight"


class LayoutError(InvalidWeightsError):
    """A published state dict does not fit the tokenizer it is loaded into (names, shapes), or vtok cannot write a
    tokenizer in a reference layout."""


def reference_names(tokenizer: Any) -> dict[str, str]:
    """``{vtok parameter or buffer name: reference name}`` for a conv tokenizer; ``qkv`` entries map to the ``q``
    name (``k`` and ``v`` follow it).

    Raises:
        LayoutError: the tokenizer is not a conv encoder / decoder with a VQ or Gaussian bottleneck.
    """
    check_reference_tokenizer(tokenizer)
    out: dict[str, str] = {}
    for role in ("encoder", "decoder"):
        part = getattr(tokenizer, role)
        for name in part.state_dict():
            module, _, leaf = name.rpartition(".")
            reference = _reference_module(part.reference_names, module, role)
            if reference is None:
                raise LayoutError(f"{role}.{name} has no place in the reference network (lowpass_skip or "
                                  "space-to-depth are vtok's own)")
            out[f"{role}.{name}"] = f"{reference}.{leaf}"
    if tokenizer.quantizer.codebook_size is not None:
        out["quantizer.codebook"] = CODEBOOK
    return out


def check_reference_tokenizer(tokenizer: Any) -> None:
    """Raise :class:`LayoutError` unless the tokenizer is one the reference layout can hold."""
    config = tokenizer.config
    kinds = (config["encoder"]["kind"], config["quantizer"]["kind"], config["decoder"]["kind"])
    if kinds[0] != "conv" or kinds[2] != "conv" or kinds[1] not in ("vq", "gaussian"):
        raise LayoutError(f"the reference layout holds conv encoder + vq or gaussian bottleneck + conv decoder, not "
                          f"{' + '.join(kinds)}")
    for role in ("encoder", "decoder"):
        options = config[role]
        if options.get("patch_size", 1) != 1 or options.get("downsample") or options.get("lowpass_skip"):
            raise LayoutError(f"{role}: patch_size / downsample / lowpass_skip are vtok's own, not in the reference")
    if config["encoder"].get("downsample_padding", "same") != "bottom_right":
        raise LayoutError("encoder.downsample_padding must be bottom_right, as the references pad")
    quantizer = tokenizer.quantizer
    if kinds[1] == "vq" and (getattr(quantizer, "linear_codebook", False) or quantizer.codebook_dim != quantizer.in_dim
                             or quantizer.ema_decay is not None):
        raise LayoutError("the reference codebook is one plain (K, D) table: no codebook_dim projection, "
                          "linear_codebook or EMA codebook")
    if kinds[1] == "gaussian" and quantizer.in_dim != 2 * quantizer.latent_dim:
        raise LayoutError("the reference Gaussian takes 2 x latent channels (no projection)")


def to_reference(tokenizer: Any, state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The tokenizer's weights (``state``, default its own) under the reference names."""
    state = dict(tokenizer.state_dict() if state is None else state)
    out: dict[str, Tensor] = {}
    for name, reference in reference_names(tokenizer).items():
        value = state.pop(name)
        if name.endswith(".qkv.weight") or name.endswith(".qkv.bias"):
            stem, leaf = reference.rsplit(".", 2)[0], name.rsplit(".", 1)[1]
            for part, chunk in zip("qkv", value.chunk(3)):
                out[f"{stem}.{part}.{leaf}"] = chunk.clone()
        else:
            out[reference] = value
    leftover = [k for k in state if not is_bookkeeping(k)]
    if leftover:
        raise LayoutError(f"no reference name for {leftover[:5]}")
    return out


def from_reference(tokenizer: Any, reference: Mapping[str, Tensor], dropped: tuple[str, ...] = ()
                   ) -> dict[str, Tensor]:
    """A vtok state dict for ``tokenizer`` from a state dict in the reference layout.

    Args:
        dropped: prefixes of reference tensors that are deliberately not loaded (a discriminator, LPIPS).

    Raises:
        LayoutError: a tensor the tokenizer needs is missing, one is left over (not dropped), or a shape differs;
            the message names them.
    """
    remaining = {k: v for k, v in reference.items() if not k.startswith(dropped)}
    own = tokenizer.state_dict()
    out: dict[str, Tensor] = {}
    missing = []
    for name, ref in reference_names(tokenizer).items():
        if name.endswith(".qkv.weight") or name.endswith(".qkv.bias"):
            stem, leaf = ref.rsplit(".", 2)[0], name.rsplit(".", 1)[1]
            parts = [f"{stem}.{p}.{leaf}" for p in "qkv"]
            if not all(p in remaining for p in parts):
                missing += [p for p in parts if p not in remaining]
                continue
            value = torch.cat([remaining.pop(p).reshape(-1, *own[name].shape[1:]) for p in parts])
        elif ref in remaining:
            value = remaining.pop(ref)
        else:
            missing.append(ref)
            continue
        if value.numel() != own[name].numel():
            raise LayoutError(f"{ref}: shape {tuple(value.shape)}, the tokenizer's {name} is {tuple(own[name].shape)}")
        out[name] = value.reshape(own[name].shape).to(own[name].dtype)
    if missing:
        raise LayoutError(f"the published weights lack {len(missing)} tensor(s) the network needs: {missing[:5]}")
    if remaining:
        raise LayoutError(f"{len(remaining)} published tensor(s) have no place in the network: "
                          f"{sorted(remaining)[:5]} (a different architecture, or parts to list as dropped)")
    for name, value in own.items():  # buffers vtok keeps for itself (code use, initialisation flags)
        if name not in out:
            if not is_bookkeeping(name):
                raise LayoutError(f"{name} is not in the reference layout")
            out[name] = value
    return out


def _reference_module(names: Mapping[str, str], module: str, role: str) -> str | None:
    """``layers.7.conv1`` -> ``encoder.down.0.block.1.conv1`` (or a top-level name for the 1x1 convs)."""
    head, _, rest = module.partition(".")
    key = head if head in names else ".".join(module.split(".")[:2])
    if key not in names:
        return None
    rest = module[len(key) + 1:] if module != key else ""
    rest = ".".join(BLOCK_RENAMES.get(p, p) for p in rest.split(".")) if rest else ""
    if rest.startswith("qkv"):
        rest = "q" + rest[3:]
    base = names[key]
    base = base if base in ("quant_conv", "post_quant_conv") else f"{role}.{base}"
    return f"{base}.{rest}" if rest else base


def is_bookkeeping(name: str) -> bool:
    """Buffers vtok adds to a bottleneck (running code use, whether the codebook was initialised, LFQ's step count
    for its entropy schedule)."""
    return name.startswith("quantizer.") and name.rsplit(".", 1)[1] in ("relative_use", "initialized", "steps")


def config_from_ldm(ddconfig: Mapping[str, Any], embed_dim: int, n_embed: int | None = None,
                    l2_normalize: bool = False, image_size: int | None = None) -> dict[str, Any]:
    """A vtok tokenizer config for an LDM / taming first stage: its ``ddconfig`` (``ch``, ``ch_mult``,
    ``num_res_blocks``, ``attn_resolutions``, ``z_channels``, ``double_z``, ``resolution``, ``in_channels``,
    ``out_ch``) and ``embed_dim``; ``n_embed`` codes for a VQ model (``None``: the Gaussian of a KL model)."""
    common = {"kind": "conv", "channels": int(ddconfig["ch"]), "channel_mult": [int(m) for m in ddconfig["ch_mult"]],
              "num_res_blocks": int(ddconfig["num_res_blocks"]), "attention": True, "mid_blocks": 2,
              "attn_resolutions": [int(r) for r in ddconfig.get("attn_resolutions", [])],
              "resolution": int(ddconfig["resolution"]), "z_channels": int(ddconfig["z_channels"]),
              "norm_groups": int(ddconfig.get("norm_groups", 32))}
    double_z = bool(ddconfig.get("double_z", n_embed is None))
    encoder = {**common, "in_channels": int(ddconfig.get("in_channels", 3)), "downsample_padding": "bottom_right",
               "double_z": double_z, "out_dim": embed_dim * (2 if double_z else 1)}
    decoder = {**common, "out_channels": int(ddconfig.get("out_ch", 3))}
    if n_embed is None:
        quantizer: dict[str, Any] = {"kind": "gaussian", "latent_dim": embed_dim}
    else:
        # a trained codebook: no data initialisation, plain euclidean (or cosine) lookup, VQGAN's beta
        quantizer = {"kind": "vq", "codebook_size": int(n_embed), "codebook_dim": embed_dim,
                     "l2_normalize": l2_normalize, "commitment_weight": 0.25, "data_init": False}
    return {"encoder": encoder, "quantizer": quantizer, "decoder": decoder,
            "image_size": int(image_size or ddconfig["resolution"])}
