"""The published tokenizers' networks rebuilt from their reference code's structure (names, shapes, forward), for
the tests of ``vtok.published`` and the presets: taming's modules (installed), LlamaGen's and Open-MAGVIT2's module
trees, TiTok's tensor names. Each builder says which reference file it follows."""

import json

import pytest
import torch

taming_model = pytest.importorskip("taming.modules.diffusionmodules.model")
taming_quantize = pytest.importorskip("taming.modules.vqvae.quantize")


def random_images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1



def taming_network(double_z: bool, embed: int = 8, codes: int | None = 64) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    dd = {"ch": 32, "out_ch": 3, "ch_mult": (1, 2, 2), "num_res_blocks": 2, "attn_resolutions": [16],
          "in_channels": 3, "resolution": 32, "z_channels": 16, "double_z": double_z, "dropout": 0.0}
    parts = {"encoder": taming_model.Encoder(**dd), "decoder": taming_model.Decoder(**dd),
             "quant_conv": torch.nn.Conv2d(32 if double_z else 16, 2 * embed if double_z else embed, 1),
             "post_quant_conv": torch.nn.Conv2d(embed, 16, 1)}
    if codes:
        parts["quantize"] = taming_quantize.VectorQuantizer2(codes, embed, beta=0.25)
    return {name: part.double().eval() for name, part in parts.items()}


def state_of(parts: dict[str, torch.nn.Module], prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}



def taming_count(ch_mult: list[int], attn: list[int], z: int, double_z: bool, embed: int, codes: int,
                  blocks: int = 2) -> int:
    """Parameters of taming's own Encoder + Decoder (the code LDM copied) for a config, plus the 1x1 quant convs
    and the codebook, built on the meta device."""
    dd = {"ch": 128, "out_ch": 3, "ch_mult": ch_mult, "num_res_blocks": blocks, "attn_resolutions": attn,
          "in_channels": 3, "resolution": 256, "z_channels": z, "double_z": double_z, "dropout": 0.0}
    with torch.device("meta"):
        modules = [taming_model.Encoder(**dd), taming_model.Decoder(**dd),
                   torch.nn.Conv2d(2 * z if double_z else z, 2 * embed if double_z else embed, 1),
                   torch.nn.Conv2d(embed, z, 1)]
    return sum(p.numel() for m in modules for p in m.parameters()) + codes * embed




def llamagen_network(ch: int, ch_mult: list[int], z: int, embed: int, codes: int) -> torch.nn.Module:
    """LlamaGen's VQModel module tree (tokenizer/tokenizer_image/vq_model.py: ``conv_blocks.{i}.res`` / ``.attn``
    with attention at the lowest-resolution level only, ``mid`` as a 3-entry list, the decoder's levels from the
    lowest resolution), assembled from taming's blocks, which LlamaGen's are copies of."""
    from torch import nn

    blocks = taming_model

    def resnet(a, b):
        return blocks.ResnetBlock(in_channels=a, out_channels=b, temb_channels=0, dropout=0.0)

    levels = len(ch_mult)
    encoder, decoder = nn.Module(), nn.Module()
    encoder.conv_in = nn.Conv2d(3, ch, 3, padding=1)
    encoder.conv_blocks, width = nn.ModuleList(), ch
    for i, mult in enumerate(ch_mult):
        level = nn.Module()
        level.res = nn.ModuleList([resnet(width if j == 0 else ch * mult, ch * mult) for j in range(2)])
        width = ch * mult
        level.attn = nn.ModuleList([blocks.AttnBlock(width) for _ in range(2)] if i == levels - 1 else [])
        if i != levels - 1:
            level.downsample = blocks.Downsample(width, True)
        encoder.conv_blocks.append(level)
    encoder.mid = nn.ModuleList([resnet(width, width), blocks.AttnBlock(width), resnet(width, width)])
    encoder.norm_out, encoder.conv_out = blocks.Normalize(width), nn.Conv2d(width, z, 3, padding=1)
    decoder.conv_in = nn.Conv2d(z, width, 3, padding=1)
    decoder.mid = nn.ModuleList([resnet(width, width), blocks.AttnBlock(width), resnet(width, width)])
    decoder.conv_blocks = nn.ModuleList()
    for i in reversed(range(levels)):
        level = nn.Module()
        level.res = nn.ModuleList([resnet(width if j == 0 else ch * ch_mult[i], ch * ch_mult[i]) for j in range(3)])
        width = ch * ch_mult[i]
        level.attn = nn.ModuleList([blocks.AttnBlock(width) for _ in range(3)] if i == levels - 1 else [])
        if i != 0:
            level.upsample = blocks.Upsample(width, True)
        decoder.conv_blocks.append(level)
    decoder.norm_out, decoder.conv_out = blocks.Normalize(width), nn.Conv2d(width, 3, 3, padding=1)
    model = nn.Module()
    model.encoder, model.decoder = encoder, decoder
    model.quantize = nn.Module()
    model.quantize.embedding = nn.Embedding(codes, embed)
    model.quantize.register_buffer("codebook_used", torch.zeros(65536))
    model.quant_conv, model.post_quant_conv = nn.Conv2d(z, embed, 1), nn.Conv2d(embed, z, 1)
    return model



def open_magvit2_network(ch: int, ch_mult: list[int], blocks: int, bits: int) -> torch.nn.Module:
    """Open-MAGVIT2's module tree as its improved_model.py builds it (names, shapes, biases), from torch layers:
    ``down.{i}.block.{j}`` / ``downsample``, ``mid_block``, ``adaptive.{i}.gamma`` / ``beta``, ``up.{i}.block.{j}``
    / ``upsample.conv1``; residual blocks ``norm1 conv1 norm2 conv2 nin_shortcut`` without conv biases."""
    from torch import nn

    def res(a, b):
        block = nn.Module()
        block.norm1, block.norm2 = nn.GroupNorm(32, a), nn.GroupNorm(32, b)
        block.conv1, block.conv2 = nn.Conv2d(a, b, 3, padding=1, bias=False), nn.Conv2d(b, b, 3, padding=1, bias=False)
        if a != b:
            block.nin_shortcut = nn.Conv2d(a, b, 1, bias=False)
        return block

    encoder, decoder, width = nn.Module(), nn.Module(), ch
    encoder.conv_in, encoder.down = nn.Conv2d(3, ch, 3, padding=1, bias=False), nn.ModuleList()
    for i, mult in enumerate(ch_mult):
        level = nn.Module()
        level.block = nn.ModuleList([res(width if j == 0 else ch * mult, ch * mult) for j in range(blocks)])
        width = ch * mult
        if i < len(ch_mult) - 1:
            level.downsample = nn.Conv2d(width, width, 3, stride=2, padding=1)
        encoder.down.append(level)
    encoder.mid_block = nn.ModuleList([res(width, width) for _ in range(blocks)])
    encoder.norm_out, encoder.conv_out = nn.GroupNorm(32, width), nn.Conv2d(width, bits, 1)
    decoder.conv_in = nn.Conv2d(bits, width, 3, padding=1)
    decoder.mid_block = nn.ModuleList([res(width, width) for _ in range(blocks)])
    adaptive, up = [], []
    for i in reversed(range(len(ch_mult))):
        norm = nn.Module()
        norm.gamma, norm.beta = nn.Linear(bits, width), nn.Linear(bits, width)
        adaptive.insert(0, norm)
        level = nn.Module()
        level.block = nn.ModuleList([res(width if j == 0 else ch * ch_mult[i], ch * ch_mult[i]) for j in range(blocks)])
        width = ch * ch_mult[i]
        if i > 0:
            level.upsample = nn.Module()
            level.upsample.conv1 = nn.Conv2d(width, 4 * width, 3, padding=1)
        up.insert(0, level)
    decoder.adaptive, decoder.up = nn.ModuleList(adaptive), nn.ModuleList(up)
    decoder.norm_out, decoder.conv_out = nn.GroupNorm(32, width), nn.Conv2d(width, 3, 3, padding=1)
    model = nn.Module()
    model.encoder, model.decoder = encoder, decoder
    return model



def titok_names(depth: int, levels: int = 5, res_blocks: int = 2) -> set[str]:
    """The tensor names TiTok's modeling/titok.py gives a two-stage VQ model (its PyTorchModelHubMixin folder), as
    its __init__ builds them: encoder and decoder ViTs, the latent tokens, the codebook, MaskGIT-VQGAN's codebook
    and pixel decoder (``up.{i}.block.{j}``, ``nin_shortcut`` where the width changes, ``upsample_conv``)."""
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias"]
    trunk = ["class_embedding", "positional_embedding", "latent_token_positional_embedding", "ln_pre.weight",
             "ln_pre.bias", "ln_post.weight", "ln_post.bias",
             *(f"transformer.{i}.{name}" for i in range(depth) for name in block)]
    names = {"latent_tokens", "quantize.embedding.weight", "pixel_quantize.embedding.weight",
             *(f"encoder.{n}" for n in [*trunk, "patch_embed.weight", "patch_embed.bias", "conv_out.weight",
                                        "conv_out.bias"]),
             *(f"decoder.{n}" for n in [*trunk, "decoder_embed.weight", "decoder_embed.bias", "mask_token",
                                        "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias"])}
    res = ["norm1.weight", "norm1.bias", "conv1.weight", "norm2.weight", "norm2.bias", "conv2.weight"]
    mult = [1, 1, 2, 2, 4][:levels]
    pixel = ["conv_in.weight", "conv_in.bias", "norm_out.weight", "norm_out.bias", "conv_out.weight", "conv_out.bias",
             *(f"mid.{j}.{n}" for j in range(res_blocks) for n in res)]
    for i in range(levels):
        widens = mult[min(i + 1, levels - 1)] != mult[i]
        pixel += [f"up.{i}.block.{j}.{n}" for j in range(res_blocks) for n in res]
        pixel += [f"up.{i}.block.0.nin_shortcut.weight"] if widens else []
        pixel += [f"up.{i}.upsample_conv.weight", f"up.{i}.upsample_conv.bias"] if i else []
    return names | {f"pixel_decoder.{n}" for n in pixel}


def titok_folder(path, tokenizer) -> dict:
    """Write ``tokenizer`` as TiTok's folder would hold it: its config.json and model.safetensors, TiTok's names."""
    from safetensors.torch import save_file

    config = {"model": {"vq_model": {"codebook_size": 64, "token_size": 12, "use_l2_norm": True,
                                     "commitment_cost": 0.25, "vit_enc_model_size": "small",
                                     "vit_dec_model_size": "small", "vit_enc_patch_size": 16,
                                     "vit_dec_patch_size": 16, "num_latent_tokens": 8, "finetune_decoder": True}},
              "dataset": {"preprocessing": {"crop_size": 64}}, "experiment": {"output_dir": "titok"}}
    theirs = {}
    for name, value in tokenizer.state_dict().items():
        if name in ("quantizer.relative_use", "quantizer.initialized"):
            continue
        name = {"encoder.latent_tokens": "latent_tokens", "quantizer.codebook": "quantize.embedding.weight"}.get(
            name, name.removeprefix("decoder.") if name.startswith("decoder.pixel_") else name)
        theirs[name] = value.contiguous()
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file(theirs, str(path / "model.safetensors"))
    return theirs

