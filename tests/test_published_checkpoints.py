"""Published checkpoints into vtok: taming / IBQ, Stable Diffusion, LlamaGen, Open-MAGVIT2, TiTok; every tensor
mapped or dropped by name, and the safe pickle reader.

Tolerances, with identical code indices: against taming's modules in fp64, < 1e-9 (in fp32 its attention, a plain
bmm and softmax where vtok calls scaled_dot_product_attention, rounds up to about 1e-5 apart); where vtok's
bottleneck is involved in fp64, < 1e-6 (quantizer maths always runs in fp32).
"""

import argparse

import pytest
import torch
from hydra.utils import instantiate

from vtok import Tokenizer
from vtok.published import LayoutError, UnsafePickleError, from_published, load_pickle, to_reference

from .conftest import compose_config
from .published_networks import (
    llamagen_network,
    open_magvit2_network,
    random_images,
    state_of,
    taming_count,
    taming_model,
    taming_network,
    taming_quantize,  # noqa: F401  (skips without taming)
    titok_folder,
    titok_names,
)


def test_a_taming_vqgan_checkpoint_imports_against_tamings_own_modules(tmp_path):
    parts = taming_network(double_z=False)
    state = state_of(parts)
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)  # dropped, and counted
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    checkpoint = {"state_dict": state, "global_step": 7, "hparams": argparse.Namespace(lr=4.5e-6)}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    tokenizer, record = from_published(tmp_path / "last.ckpt", image_size=32)
    assert record.format == "taming" and record.dropped == {"loss.": 2} and record.mapped == len(state) - 2
    tokenizer.double()
    images = random_images().double()
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
    parts = taming_network(double_z=True, embed=4, codes=None)
    state = state_of(parts, "first_stage_model.")
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2, 4, 3, 3)  # the UNet: dropped
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(1, 77)
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "sd.ckpt")
    tokenizer, record = from_published(tmp_path / "sd.ckpt", image_size=32)
    assert record.format == "ldm" and record.dropped == {"model.": 1, "cond_stage_model.": 1}
    assert tokenizer.config["quantizer"] == {"kind": "gaussian", "latent_dim": 4, "dim": 8}
    tokenizer.double()
    images = random_images().double()
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
    parts = taming_network(double_z=False)
    state = state_of(parts)
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



def test_a_llamagen_vq16_checkpoint_imports_into_the_llamagen_preset_with_every_key_consumed(tmp_path):
    torch.manual_seed(0)
    published = llamagen_network(128, [1, 1, 2, 2, 4], 256, 8, 16384)  # VQ_16's published config
    state = published.state_dict()
    torch.save({"model": state, "args": argparse.Namespace(vq_model="VQ-16"), "steps": 1}, tmp_path / "vq.pt")
    tokenizer, record = from_published(tmp_path / "vq.pt")  # auto: a LlamaGen checkpoint
    assert record.format == "llamagen" and record.dropped == {"quantize.codebook_used": 1}
    assert record.mapped == len(state) - 1
    preset = compose_config("experiment=llamagen_vq16", toy=False)
    with torch.device("meta"):
        expected = instantiate(preset.model)
    count = sum(p.numel() for p in tokenizer.parameters())
    assert count == sum(p.numel() for p in expected.parameters())
    assert count == taming_count([1, 1, 2, 2, 4], [16], 256, False, 8, 16384)  # taming's trunk, LlamaGen's codes
    assert count == sum(p.numel() for n, p in published.named_parameters())


def test_a_llamagen_checkpoint_gives_its_codes_and_images():
    """LlamaGen's forward (encoder, quant_conv, l2-normalised nearest code, post_quant_conv, decoder), in fp64."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    published = llamagen_network(32, [1, 2, 2], 16, 8, 64).double().eval()
    from vtok.published.importer import ImportRecord, from_llamagen, infer_ldm_config

    reference = from_llamagen(published.state_dict(), ImportRecord("x", "llamagen"))
    tokenizer = Tokenizer(**infer_ldm_config(reference, 32, l2_normalize=True))
    from vtok.published import from_reference

    tokenizer.load_state_dict(from_reference(tokenizer, reference))
    tokenizer = tokenizer.double().eval()
    images = random_images().double()

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



def test_an_open_magvit2_checkpoint_imports_its_weight_average_with_every_key_consumed(tmp_path):
    torch.manual_seed(0)
    published = open_magvit2_network(32, [1, 2, 2], 2, 10)
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
    parts = taming_network(double_z=False)
    state = state_of(parts)
    state.update({f"model_ema.{k.replace('.', '')}": v + 1 for k, v in state.items() if "quantize" in k})
    from vtok.published.importer import ImportRecord, _average_or_live

    record = ImportRecord("ibq.ckpt", "taming")
    chosen = _average_or_live(state, "ema", record)
    assert record.averaged == 1 and record.dropped == {"model_ema.": 0}
    assert torch.equal(chosen["quantize.embedding.weight"], state["model_ema.quantizeembeddingweight"])



def test_a_titok_folder_imports_by_titoks_names_into_the_titok_family(tmp_path):
    from vtok.published.importer import titok_config

    torch.manual_seed(0)
    written = Tokenizer(**titok_config({"model": {"vq_model": {
        "codebook_size": 64, "token_size": 12, "use_l2_norm": True, "vit_enc_model_size": "small",
        "vit_dec_model_size": "small", "vit_enc_patch_size": 16, "vit_dec_patch_size": 16, "num_latent_tokens": 8}},
        "dataset": {"preprocessing": {"crop_size": 64}}}))
    theirs = titok_folder(tmp_path / "titok", written)
    assert set(theirs) == titok_names(depth=8, levels=5)  # the names TiTok's own code writes
    tokenizer, record = from_published(tmp_path / "titok")  # auto: config.json has model.vq_model
    assert record.format == "titok" and record.mapped == len(theirs) and not record.dropped
    assert tokenizer.config["decoder"]["pixel_decoder"] == "maskgit_vqgan" and tokenizer.fixed_size == 64
    images = random_images(1, 64)
    with torch.no_grad():
        assert torch.equal(tokenizer.decode(tokenizer.encode(images)), written.eval().decode(written.encode(images)))


# TiTok's presets against TiTok's own modeling/titok.py (crop 256, patch 16, 4,096 codes of 12, two-stage decoder
# with MaskGIT-VQGAN's pixel decoder and codebook), counted with that code: it is not installed for CI, so the
# counts are recorded here. vtok's titok family was also run against that code here: identical codes, images
