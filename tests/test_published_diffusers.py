"""Published tokenizers in and out through diffusers: AutoencoderKL / VQModel folders imported and exported (both
directions), what export refuses, evaluating and fine-tuning an imported tokenizer.

Tolerance against diffusers in fp32, on images in [-1, 1], with identical code indices: max abs difference < 5e-5
(the same arithmetic in another order: under 1e-5 on an AVX-512 CPU, 1.03e-5 measured on an AVX2-only one, whose
kernels accumulate in other blocks; a wrong layout or weight differs by 1e-2 and more).
"""

import json

import pytest
import torch
from hydra.utils import instantiate

from vtok import Tokenizer
from vtok.import_published import main as import_main
from vtok.published import LayoutError, from_published, write_diffusers

from .conftest import compose_config
from .published_networks import (
    random_images,
)

diffusers = pytest.importorskip("diffusers")
TOLERANCE = 5e-5


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
    images = random_images()
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
    images = random_images()
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
    images = random_images()
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



def test_evaluating_an_imported_folder_names_the_protocol(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from .conftest import ROOT

    _vq().save_pretrained(tmp_path / "vq")
    assert import_main([f"src={tmp_path / 'vq'}", f"out={tmp_path / 'imported'}"]) == 0
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.fromarray(random_images(1, 80)[0].add(1).mul(127.5).byte().permute(1, 2, 0).numpy()[:, : 70 + i]).save(
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
        assert (loaded(random_images()).sample - tuned.decode(tuned.encode(random_images()))).abs().max() < TOLERANCE

