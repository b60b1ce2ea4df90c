"""Published tokenizers in and out: diffusers folders both ways, taming / LDM checkpoints against taming's own
modules, the safe pickle reader, and the published-recipe presets' parameter counts.

Tolerances, on images in [-1, 1], with identical code indices: against diffusers in fp32, max abs difference
< 1e-5 (the same arithmetic in another order); against taming's modules in fp64, < 1e-9 (in fp32 its attention, a
plain bmm and softmax where vtok calls scaled_dot_product_attention, rounds up to about 1e-5 apart).
"""

import argparse
import json

import pytest
import torch
from hydra.utils import instantiate

from vtok import Tokenizer
from vtok.import_published import main as import_main
from vtok.published import LayoutError, UnsafePickleError, from_published, load_pickle, to_reference, write_diffusers

from .conftest import compose_config

diffusers = pytest.importorskip("diffusers")
TOLERANCE = 1e-5


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _kl(quant_convs: bool = True) -> "diffusers.AutoencoderKL":
    """SD-style with quant convs; without them and with a shift, as SD3's and FLUX's VAEs are."""
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D",
                                                           "DownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D"), norm_num_groups=8,
        latent_channels=4, layers_per_block=2, sample_size=32, scaling_factor=0.13025 if quant_convs else 0.3611,
        shift_factor=None if quant_convs else 0.1159, use_quant_conv=quant_convs,
        use_post_quant_conv=quant_convs).eval()


def _vq(mid_attention: bool = True) -> "diffusers.VQModel":
    torch.manual_seed(0)
    return diffusers.VQModel(
        block_out_channels=(16, 32), down_block_types=("AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D"), norm_num_groups=8, latent_channels=6,
        num_vq_embeddings=32, vq_embed_dim=3, layers_per_block=1, sample_size=32,
        mid_block_add_attention=mid_attention).eval()


@pytest.mark.parametrize("quant_convs", [True, False])
def test_a_diffusers_autoencoder_kl_imports_with_equal_latents_and_images(tmp_path, quant_convs):
    reference = _kl(quant_convs)
    reference.save_pretrained(tmp_path / "kl")
    assert import_main([f"src={tmp_path / 'kl'}", f"out={tmp_path / 'vtok'}"]) == 0
    tokenizer = Tokenizer.from_pretrained(str(tmp_path / "vtok"))  # through the ordinary vtok folder
    images = _images()
    with torch.no_grad():
        mean = reference.encode(images).latent_dist.mode()
        expected = reference.decode(mean).sample
        tokens = tokenizer.encode(images)
        decoded = tokenizer.decode(tokens)
    assert (tokens.latents.permute(0, 3, 1, 2) - mean).abs().max() < TOLERANCE
    assert (decoded - expected).abs().max() < TOLERANCE
    scale, shift = reference.config.scaling_factor, reference.config.shift_factor or 0.0
    assert (tokenizer.scaling_factor, tokenizer.shift_factor) == (scale, shift)
    assert torch.allclose(tokenizer.to_diffusion(tokens.latents), (tokens.latents - shift) * scale)
    assert sum(p.numel() for p in tokenizer.parameters()) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("mid_attention", [True, False])
def test_a_diffusers_vq_model_imports_with_equal_codes_and_images(tmp_path, mid_attention):
    reference = _vq(mid_attention)
    reference.save_pretrained(tmp_path / "vq")
    tokenizer, record = from_published(tmp_path / "vq")
    assert record.format == "diffusers" and record.mapped == len(reference.state_dict()) and not record.dropped
    images = _images()
    with torch.no_grad():
        latents = reference.encode(images).latents
        _, _, (_, _, expected_codes) = reference.quantize(latents)
        expected = reference.decode(latents).sample
        tokens = tokenizer.encode(images)
        decoded = tokenizer.decode(tokens)
    assert torch.equal(tokens.indices.flatten(), expected_codes.flatten())
    assert (decoded - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("model", ["kl", "kl_without_quant_convs", "vq"])
def test_vtok_export_format_diffusers_loads_in_diffusers_with_equal_outputs(tmp_path, model):
    from vtok.hub import main as export_main

    reference = _kl(model == "kl") if model.startswith("kl") else _vq()
    reference.save_pretrained(tmp_path / "source")
    tokenizer = Tokenizer.from_published(str(tmp_path / "source"))
    tokenizer.save_pretrained(str(tmp_path / "vtok"))
    assert export_main([f"ckpt={tmp_path / 'vtok'}", f"out={tmp_path / 'back'}", "format=diffusers"]) == 0
    cls = diffusers.AutoencoderKL if model.startswith("kl") else diffusers.VQModel
    loaded = cls.from_pretrained(str(tmp_path / "back")).eval()
    images = _images()
    with torch.no_grad():
        ours = tokenizer.decode(tokenizer.encode(images))
        theirs = loaded(images).sample
    assert (ours - theirs).abs().max() < TOLERANCE
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["_class_name"] == cls.__name__ and written["block_out_channels"] == list(
        reference.config.block_out_channels)
    assert loaded.config.scaling_factor == reference.config.scaling_factor
    assert loaded.config.get("shift_factor") == reference.config.get("shift_factor")


def test_export_to_diffusers_refuses_what_diffusers_cannot_express(tmp_path):
    quickstart = Tokenizer(**{**_tiny_conv(), "quantizer": {"kind": "vq", "codebook_size": 16, "l2_normalize": True}})
    with pytest.raises(LayoutError, match="downsample_padding must be bottom_right"):
        write_diffusers(quickstart, tmp_path / "x")
    cosine = Tokenizer(**_tiny_conv(reference=True, quantizer={"kind": "vq", "codebook_size": 16,
                                                                "l2_normalize": True}))
    with pytest.raises(LayoutError, match="euclidean distance"):
        write_diffusers(cosine, tmp_path / "y")
    fsq = Tokenizer(**_tiny_conv(reference=True, quantizer={"kind": "fsq", "levels": [5, 5]}))
    with pytest.raises(LayoutError, match="conv encoder \\+ vq or gaussian"):
        write_diffusers(fsq, tmp_path / "z")


def _tiny_conv(reference: bool = False, quantizer: dict | None = None) -> dict:
    trunk = {"kind": "conv", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1}
    extra = {"downsample_padding": "bottom_right", "z_channels": 8} if reference else {}
    return {"encoder": {**trunk, **extra, "out_dim": 8}, "quantizer": quantizer or {"kind": "vq", "codebook_size": 16},
            "decoder": {**trunk, **({"z_channels": 8} if reference else {})}, "image_size": 32}


# --------------------------------------------------------------------------------------- taming / LDM checkpoints
taming_model = pytest.importorskip("taming.modules.diffusionmodules.model")
taming_quantize = pytest.importorskip("taming.modules.vqvae.quantize")


def _taming_network(double_z: bool, embed: int = 8, codes: int | None = 64) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    dd = {"ch": 32, "out_ch": 3, "ch_mult": (1, 2, 2), "num_res_blocks": 2, "attn_resolutions": [16],
          "in_channels": 3, "resolution": 32, "z_channels": 16, "double_z": double_z, "dropout": 0.0}
    parts = {"encoder": taming_model.Encoder(**dd), "decoder": taming_model.Decoder(**dd),
             "quant_conv": torch.nn.Conv2d(32 if double_z else 16, 2 * embed if double_z else embed, 1),
             "post_quant_conv": torch.nn.Conv2d(embed, 16, 1)}
    if codes:
        parts["quantize"] = taming_quantize.VectorQuantizer2(codes, embed, beta=0.25)
    return {name: part.double().eval() for name, part in parts.items()}


def _state(parts: dict[str, torch.nn.Module], prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}


def test_a_taming_vqgan_checkpoint_imports_against_tamings_own_modules(tmp_path):
    parts = _taming_network(double_z=False)
    state = _state(parts)
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)  # dropped, and counted
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    checkpoint = {"state_dict": state, "global_step": 7, "hparams": argparse.Namespace(lr=4.5e-6)}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    tokenizer, record = from_published(tmp_path / "last.ckpt", image_size=32)
    assert record.format == "taming" and record.dropped == {"loss.": 2} and record.mapped == len(state) - 2
    tokenizer.double()
    images = _images().double()
    with torch.no_grad():
        quantized, _, (_, _, codes) = parts["quantize"](parts["quant_conv"](parts["encoder"](images)))
        expected = parts["decoder"](parts["post_quant_conv"](quantized))
        tokens = tokenizer.encode(images)
        decoded = tokenizer.decode(tokens)
    assert torch.equal(tokens.indices.flatten(), codes.flatten())
    assert (decoded - expected).abs().max() < 1e-9
    back = to_reference(tokenizer)  # and out again, tensor for tensor
    assert back.keys() == {k for k in state if not k.startswith("loss.")}
    assert all(torch.equal(back[k], state[k].double()) for k in back)


def test_a_stable_diffusion_checkpoint_imports_its_first_stage(tmp_path):
    parts = _taming_network(double_z=True, embed=4, codes=None)
    state = _state(parts, "first_stage_model.")
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2, 4, 3, 3)  # the UNet: dropped
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(1, 77)
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "sd.ckpt")
    tokenizer, record = from_published(tmp_path / "sd.ckpt", image_size=32)
    assert record.format == "ldm" and record.dropped == {"model.": 1, "cond_stage_model.": 1}
    assert tokenizer.config["quantizer"] == {"kind": "gaussian", "latent_dim": 4, "dim": 8}
    tokenizer.double()
    images = _images().double()
    with torch.no_grad():
        moments = parts["quant_conv"](parts["encoder"](images))
        mean = moments.chunk(2, dim=1)[0]
        expected = parts["decoder"](parts["post_quant_conv"](mean))
        tokens = tokenizer.encode(images)
        decoded = tokenizer.decode(tokens)
    # vtok's bottleneck computes in fp32 whatever the network's precision (quantizer maths always does)
    assert (tokens.latents.permute(0, 3, 1, 2) - mean).abs().max() < 1e-6
    assert (decoded - expected).abs().max() < 1e-6


def test_a_tensor_left_over_or_of_another_shape_stops_the_import_with_its_name(tmp_path):
    parts = _taming_network(double_z=False)
    state = _state(parts)
    torch.save({"state_dict": {**state, "encoder.extra.weight": torch.zeros(3)}}, tmp_path / "extra.ckpt")
    with pytest.raises(LayoutError, match=r"no place in the network: \['encoder.extra.weight'\]"):
        from_published(tmp_path / "extra.ckpt", image_size=32)
    tokenizer = Tokenizer(**from_published.__globals__["infer_ldm_config"](state, 32))
    from vtok.published import from_reference

    del state["decoder.up.0.block.0.conv1.weight"]
    with pytest.raises(LayoutError, match=r"lack 1 tensor.*decoder.up.0.block.0.conv1.weight"):
        from_reference(tokenizer, state)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafePickleError, match=r"holds a [\w.]*open object, which vtok does not unpickle"):
        load_pickle(tmp_path / "evil.ckpt")
    with pytest.raises(UnsafePickleError):
        from_published(tmp_path / "evil.ckpt", format="taming")
    assert not marker.exists()
    torch.save({"args": argparse.Namespace(a=1), "state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pt")
    assert load_pickle(tmp_path / "ok.pt")["args"].a == 1  # the allowlist's harmless class


# ------------------------------------------------------------------------- the presets are the papers' networks
def _taming_count(ch_mult: list[int], attn: list[int], z: int, double_z: bool, embed: int, codes: int,
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


# preset: (parameters of the published network, where the number comes from)
PUBLISHED = {
    # IBQ (configs/IBQ/gpu/imagenet_ibqgan_16384.yaml: taming's model.py, 4 res blocks, attention at 16, 16,384 codes)
    "ibq": (_taming_count([1, 1, 2, 2, 4], [16], 256, False, 256, 16384, blocks=4), "taming Encoder/Decoder"),
    # taming-transformers configs/imagenet_vqgan.yaml (f16, 1,024 codes); 72.14 M, also in OFFLINE-MODELS.md
    "vqgan_f16": (_taming_count([1, 1, 2, 2, 4], [16], 256, False, 256, 1024), "taming Encoder/Decoder"),
    # LlamaGen VQ-16 (vq_model.py: taming's trunk, attention at the lowest level, z 256, 8-d codes, 16,384 codes)
    "llamagen_vq16": (_taming_count([1, 1, 2, 2, 4], [16], 256, False, 8, 16384), "taming Encoder/Decoder"),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_a_published_recipe_preset_builds_the_papers_network(preset):
    expected, _source = PUBLISHED[preset]
    cfg = compose_config(f"experiment={preset}", toy=False)
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model)
    assert sum(p.numel() for p in tokenizer.parameters()) == expected


def test_the_ldm_kl_f8_preset_is_the_sd_vae_network():
    cfg = compose_config("experiment=ldm_kl_f8", toy=False)
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model)
        sd_vae = diffusers.AutoencoderKL(  # Stable Diffusion v1's VAE config
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=256)
    count = sum(p.numel() for p in tokenizer.parameters())
    assert count == sum(p.numel() for p in sd_vae.parameters()) == 83_653_863
    assert tokenizer.scaling_factor == 0.18215


# ------------------------------------------------------------------------- evaluation and fine-tuning of imports
def test_evaluating_an_imported_folder_names_the_protocol(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from .conftest import ROOT

    _vq().save_pretrained(tmp_path / "vq")
    assert import_main([f"src={tmp_path / 'vq'}", f"out={tmp_path / 'imported'}"]) == 0
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.fromarray(_images(1, 80)[0].add(1).mul(127.5).byte().permute(1, 2, 0).numpy()[:, : 70 + i]).save(
            tmp_path / "photos" / f"{i}.png")
    result = subprocess.run(
        [sys.executable, "-m", "vtok.eval", f"ckpt={tmp_path / 'imported'}", "data=folder",
         f"data.val.root={tmp_path / 'photos'}", f"data.train.root={tmp_path / 'photos'}", "data.val_crop=adm",
         "data.image_size=32", "data.num_workers=0", "eval.fid=false", "eval.lpips=false", "eval.baselines=false",
         f"out={tmp_path / 'report'}", f"paths.root_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["protocol"]["crop"] == "adm" and report["protocol"]["crop_protocol"].startswith("ADM")
    assert report["weights"] == f"exported tokenizer {tmp_path / 'imported'}" and report["num_images"] == 3


def test_fine_tuning_the_decoder_of_an_imported_tokenizer_trains_resumes_and_exports(tmp_path, compose_run):
    from vtok.checkpoint import read_checkpoint, tokenizer_from_checkpoint
    from vtok.experiment import run as train
    from vtok.hub import main as export_main

    _vq().save_pretrained(tmp_path / "vq")
    imported, _ = from_published(tmp_path / "vq")
    imported.save_pretrained(str(tmp_path / "imported"))
    common = ["experiment=finetune_decoder", f"init.tokenizer={tmp_path / 'imported'}", "data=synthetic",
              "logger=none", "module.lr=1e-3", "module.warmup_steps=1", "module.ema_decay=null",
              "callbacks.model_checkpoint.every_n_train_steps=2"]
    train(compose_run(*common, "trainer.max_steps=2"))
    result = train(compose_run(*common, "trainer.max_steps=4", "resume=auto"))
    assert result["train_steps"] == 4
    checkpoint = read_checkpoint(tmp_path / "outputs/finetune_decoder/checkpoints/last.ckpt")
    tuned, _ = tokenizer_from_checkpoint(checkpoint, "live")
    before, after = imported.state_dict(), tuned.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quantizer."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # the tokens are what they were
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    ckpt = tmp_path / "outputs/finetune_decoder/checkpoints/last.ckpt"
    assert export_main([f"ckpt={ckpt}", f"out={tmp_path / 'diffusers'}", "format=diffusers", "weights=live"]) == 0
    loaded = diffusers.VQModel.from_pretrained(str(tmp_path / "diffusers")).eval()
    with torch.no_grad():
        assert (loaded(_images()).sample - tuned.decode(tuned.encode(_images()))).abs().max() < TOLERANCE


def test_the_adm_crop_is_guided_diffusions():
    """The ADM protocol's crop, against guided-diffusion's center_crop_arr as written there (numpy and PIL)."""
    import numpy as np
    from PIL import Image

    from vtok.data.transforms import ImageTransform

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (600, 1000, 3), dtype=np.uint8)

    def center_crop_arr(pil_image, image_size):
        while min(*pil_image.size) >= 2 * image_size:
            pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
        scale = image_size / min(*pil_image.size)
        pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
        arr = np.array(pil_image)
        crop_y, crop_x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
        return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]

    expected = torch.from_numpy(center_crop_arr(Image.fromarray(array), 256)).permute(2, 0, 1).float() / 127.5 - 1
    adm = ImageTransform(size=256, mode="adm", flip=False)(Image.fromarray(array), rng)
    assert torch.equal(adm, expected)
    center = ImageTransform(size=256, mode="center", flip=False)(Image.fromarray(array), rng)
    assert center.shape == adm.shape and not torch.equal(center, adm)  # the protocols differ: reports name theirs


# ------------------------------------------------------------------------------------------------- LlamaGen
def _llamagen_network(ch: int, ch_mult: list[int], z: int, embed: int, codes: int) -> torch.nn.Module:
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


def test_a_llamagen_vq16_checkpoint_imports_into_the_llamagen_preset_with_every_key_consumed(tmp_path):
    torch.manual_seed(0)
    published = _llamagen_network(128, [1, 1, 2, 2, 4], 256, 8, 16384)  # VQ_16's published config
    state = published.state_dict()
    torch.save({"model": state, "args": argparse.Namespace(vq_model="VQ-16"), "steps": 1}, tmp_path / "vq.pt")
    tokenizer, record = from_published(tmp_path / "vq.pt")  # auto: a LlamaGen checkpoint
    assert record.format == "llamagen" and record.dropped == {"quantize.codebook_used": 1}
    assert record.mapped == len(state) - 1
    preset = compose_config("experiment=llamagen_vq16", toy=False)
    with torch.device("meta"):
        expected = instantiate(preset.model)
    count = sum(p.numel() for p in tokenizer.parameters())
    assert count == sum(p.numel() for p in expected.parameters()) == PUBLISHED["llamagen_vq16"][0]
    assert count == sum(p.numel() for n, p in published.named_parameters())


def test_a_llamagen_checkpoint_gives_its_codes_and_images():
    """LlamaGen's forward (encoder, quant_conv, l2-normalised nearest code, post_quant_conv, decoder), in fp64."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    published = _llamagen_network(32, [1, 2, 2], 16, 8, 64).double().eval()
    from vtok.published.importer import ImportRecord, from_llamagen, infer_ldm_config

    reference = from_llamagen(published.state_dict(), ImportRecord("x", "llamagen"))
    tokenizer = Tokenizer(**infer_ldm_config(reference, 32, l2_normalize=True))
    from vtok.published import from_reference

    tokenizer.load_state_dict(from_reference(tokenizer, reference))
    tokenizer = tokenizer.double().eval()
    images = _images().double()

    def run(module, x, decoder=False):  # LlamaGen's Encoder.forward / Decoder.forward
        h = module.conv_in(x)
        for stage in ([module.mid, module.conv_blocks] if decoder else [module.conv_blocks, module.mid]):
            for block in stage:
                if hasattr(block, "res"):  # a level: res blocks (each followed by attention there), resampling
                    for j, res in enumerate(block.res):
                        h = block.attn[j](res(h, None)) if len(block.attn) else res(h, None)
                    sampler = getattr(block, "downsample", None) or getattr(block, "upsample", None)
                    h = sampler(h) if sampler is not None else h
                else:  # the middle: res, attention, res
                    h = block(h, None) if isinstance(block, taming_model.ResnetBlock) else block(h)
        return module.conv_out(F.silu(module.norm_out(h)))

    with torch.no_grad():
        z = F.normalize(published.quant_conv(run(published.encoder, images)).permute(0, 2, 3, 1), dim=-1)
        codes = F.normalize(published.quantize.embedding.weight, dim=-1)
        expected_codes = torch.cdist(z.reshape(-1, 8), codes).argmin(1)
        quantized = codes[expected_codes].reshape(z.shape).permute(0, 3, 1, 2)
        expected = run(published.decoder, published.post_quant_conv(quantized), decoder=True)
        tokens = tokenizer.encode(images)
        decoded = tokenizer.decode(tokens)
    assert torch.equal(tokens.indices.flatten(), expected_codes)
    assert (decoded - expected).abs().max() < 1e-6  # the bottleneck computes in fp32


# ------------------------------------------------------------------------------------------ Open-MAGVIT2 / IBQ
def _open_magvit2_network(ch: int, ch_mult: list[int], blocks: int, bits: int) -> torch.nn.Module:
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


def test_an_open_magvit2_checkpoint_imports_its_weight_average_with_every_key_consumed(tmp_path):
    torch.manual_seed(0)
    published = _open_magvit2_network(32, [1, 2, 2], 2, 10)
    live = published.state_dict()
    trained = [n for n, _ in published.named_parameters()]
    average = {f"model_ema.{n.replace('.', '')}": torch.randn_like(live[n]) for n in trained}
    state = {**live, **average, "model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(5),
             "loss.discriminator.blocks.0.weight": torch.zeros(2)}
    torch.save({"state_dict": state, "global_step": 3}, tmp_path / "omv.ckpt")
    tokenizer, record = from_published(tmp_path / "omv.ckpt", image_size=32)  # auto: Open-MAGVIT2's names
    assert record.format == "open_magvit2" and record.averaged == len(trained)
    assert record.dropped == {"loss.": 1, "model_ema.": 2} and record.mapped == len(live)
    loaded = tokenizer.state_dict()
    assert torch.equal(loaded["decoder.adaptive.0.gamma.weight"], average["model_ema.decoderadaptive0gammaweight"])
    assert torch.equal(loaded["encoder.down.1.block.0.skip.weight"],
                       average["model_ema.encoderdown1block0nin_shortcutweight"])
    model, _ = from_published(tmp_path / "omv.ckpt", image_size=32, weights="model")
    assert torch.equal(model.state_dict()["decoder.conv_in.weight"], live["decoder.conv_in.weight"])
    assert sum(p.numel() for p in tokenizer.parameters()) == sum(p.numel() for p in published.parameters())


def test_the_magvit2_decoder_upsamples_depth_to_space_in_dcr_order_and_normalises_adaptively():
    from vtok.tokenizers.magvit2 import AdaptiveGroupNorm, DepthToSpaceUpsample

    up = DepthToSpaceUpsample(2)  # 2 channels -> conv to 8, each a constant: channel k is k
    with torch.no_grad():
        up.conv1.weight.zero_()
        up.conv1.bias.copy_(torch.arange(8.0))
    out = up(torch.zeros(1, 2, 1, 1))
    # DCR: output channel c at offset (i, j) is conv channel (2 i + j) * C + c (pixel_shuffle's CRD: 4 c + 2 i + j)
    assert torch.equal(out[0], torch.tensor([[[0.0, 2.0], [4.0, 6.0]], [[1.0, 3.0], [5.0, 7.0]]]))
    norm = AdaptiveGroupNorm(3, 32)
    latents = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        norm.gamma.weight.copy_(torch.eye(32, 3))
        norm.gamma.bias.zero_()
        norm.beta.weight.zero_()
        norm.beta.bias.fill_(0.5)
    features = torch.randn(2, 32, 8, 8)
    expected_scale = (latents.flatten(2).var(-1) + 1e-6).sqrt()[:, 0]
    out = norm(features, latents)
    plain = torch.nn.functional.group_norm(features, 32, eps=1e-6)
    assert torch.allclose(out[:, 0], expected_scale[:, None, None] * plain[:, 0] + 0.5, atol=1e-6)


def test_an_ibq_checkpoint_imports_as_tamings_network_with_its_average():
    parts = _taming_network(double_z=False)
    state = _state(parts)
    state.update({f"model_ema.{k.replace('.', '')}": v + 1 for k, v in state.items() if "quantize" in k})
    from vtok.published.importer import ImportRecord, _average_or_live

    record = ImportRecord("ibq.ckpt", "taming")
    chosen = _average_or_live(state, "ema", record)
    assert record.averaged == 1 and record.dropped == {"model_ema.": 0}
    assert torch.equal(chosen["quantize.embedding.weight"], state["model_ema.quantizeembeddingweight"])


def test_the_open_magvit2_preset_is_its_network():
    cfg = compose_config("experiment=open_magvit2", toy=False)
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model)
        published = _open_magvit2_network(128, [1, 1, 2, 2, 4], 4, 18)  # imagenet_lfqgan_256_L.yaml
    count = sum(p.numel() for p in tokenizer.parameters())
    assert count == sum(p.numel() for p in published.parameters()) == 115_127_829
    assert {k.replace(".nin_shortcut.", ".skip.") for k in published.state_dict()} <= set(tokenizer.state_dict())


# ---------------------------------------------------------------------------------------------------------- TiTok
def _titok_names(depth: int, levels: int = 5, res_blocks: int = 2) -> set[str]:
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


def _titok_folder(path, tokenizer) -> dict:
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


def test_a_titok_folder_imports_by_titoks_names_into_the_titok_family(tmp_path):
    from vtok.published.importer import titok_config

    torch.manual_seed(0)
    written = Tokenizer(**titok_config({"model": {"vq_model": {
        "codebook_size": 64, "token_size": 12, "use_l2_norm": True, "vit_enc_model_size": "small",
        "vit_dec_model_size": "small", "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": 8}},
        "dataset": {"preprocessing": {"crop_size": 64}}}))
    theirs = _titok_folder(tmp_path / "titok", written)
    assert set(theirs) == _titok_names(depth=8, levels=5)  # the names TiTok's own code writes
    tokenizer, record = from_published(tmp_path / "titok")  # auto: config.json has model.vq_model
    assert record.format == "titok" and record.mapped == len(theirs) and not record.dropped
    assert tokenizer.config["decoder"]["pixel_decoder"] == "maskgit_vqgan" and tokenizer.fixed_size == 64
    images = _images(1, 64)
    with torch.no_grad():
        assert torch.equal(tokenizer.decode(tokenizer.encode(images)), written.eval().decode(written.encode(images)))


# TiTok's presets against TiTok's own modeling/titok.py (crop 256, patch 16, 4,096 codes of 12, two-stage decoder
# with MaskGIT-VQGAN's pixel decoder and codebook), counted with that code: it is not installed for CI, so the
# counts are recorded here. vtok's titok family was also run against that code here: identical codes, images
# 4.2e-14 apart in fp64 (legacy two-stage) and 2.5e-16 (RGB decoder).
TITOK_COUNTS = {"titok_s128": 83_674_639, "titok_b64": 204_814_095, "titok_l32": 641_054_735}


@pytest.mark.parametrize("preset", sorted(TITOK_COUNTS))
def test_a_titok_preset_is_titoks_network(preset):
    cfg = compose_config(f"experiment={preset}", toy=False)
    with torch.device("meta"):
        tokenizer = instantiate(cfg.model)
    assert sum(p.numel() for p in tokenizer.parameters()) == TITOK_COUNTS[preset]


@pytest.mark.parametrize(("mode", "interpolation"), [("resize_bicubic", "BICUBIC"), ("resize_bilinear", "BILINEAR")])
def test_titoks_and_open_magvit2s_crops_are_torchvisions(mode, interpolation):
    """TiTok evaluates on Resize(256, bicubic, antialias) + CenterCrop(256), Open-MAGVIT2 / IBQ on Resize(256) +
    CenterCrop(256) (bilinear): the crops named after them give those pixels."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from vtok.data.transforms import ImageTransform

    array = np.random.default_rng(0).integers(0, 256, (300, 411, 3), dtype=np.uint8)
    reference = transforms.Compose([
        transforms.Resize(64, interpolation=getattr(transforms.InterpolationMode, interpolation), antialias=True),
        transforms.CenterCrop(64), transforms.PILToTensor()])(Image.fromarray(array))
    ours = ImageTransform(size=64, mode=mode, flip=False)(Image.fromarray(array), np.random.default_rng(0))
    assert torch.equal(ours, reference.float() / 127.5 - 1)
    assert not torch.equal(ours, ImageTransform(size=64, mode="adm", flip=False)(Image.fromarray(array),
                                                                                 np.random.default_rng(0)))
