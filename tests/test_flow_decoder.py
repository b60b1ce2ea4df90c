"""The rectified-flow decoder: the flow's maths against closed forms, the sampler's determinism and guidance, the
tokenizer contract for generative decoders, saving and loading, and evaluation over seeds and steps."""

from __future__ import annotations

import math

import pytest
import torch

from vtok.eval.evaluate import evaluate, evaluate_to_dir
from vtok.modules.flow import SamplerSettings, flow_loss, guided, integrate, interpolate, sample_times
from vtok.tokenizers import Tokenizer


def flow_tokenizer(num_tokens: int = 8, **decoder) -> Tokenizer:
    """A tiny 1D tokenizer with a flow decoder whose output layer is not zero (so decodes depend on tokens)."""
    torch.manual_seed(0)
    tok = Tokenizer(
        encoder=dict(kind="latent_tokens", num_tokens=num_tokens, patch_size=8, width=32, depth=1, heads=2, out_dim=4,
                     image_size=32),
        quantizer=dict(kind="fsq", levels=[8, 5, 5, 5]),
        decoder=dict(kind="flow", num_tokens=num_tokens, patch_size=8, width=32, depth=2, heads=2, image_size=32,
                     sampling=dict(steps=4), **decoder),
        image_size=32)
    with torch.no_grad():
        for module in (tok.decoder.to_pixels, *(b.modulation[-1] for b in tok.decoder.transformer.blocks)):
            module.weight.normal_(0, 0.05)
    return tok.eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------ the flow's maths
def test_flow_loss_at_both_ends_of_the_path_equals_its_closed_form():
    x, noise = images(2), images(2, seed=2)
    identity = lambda x_t, t: x_t  # noqa: E731  (a "model" whose velocity is its input)
    at_image, estimate = flow_loss(identity, x, noise, torch.zeros(2))  # x_t = x: error noise - 2x
    assert at_image.item() == pytest.approx((noise - 2 * x).pow(2).mean().item(), rel=1e-6)
    assert torch.equal(estimate, x)  # x_t - 0 * v
    at_noise, estimate = flow_loss(identity, x, noise, torch.ones(2))  # x_t = noise: error -x
    assert at_noise.item() == pytest.approx(x.pow(2).mean().item(), rel=1e-6)
    assert torch.allclose(estimate, torch.zeros_like(x))  # noise - 1 * noise
    # weighted by t**2 it is the image estimate's squared error
    t = torch.tensor([0.3, 0.8])
    weighted, estimate = flow_loss(identity, x, noise, t, weighting="image")
    assert weighted.item() == pytest.approx((estimate - x).pow(2).mean().item(), rel=1e-5)
    # and a model that knows the velocity has zero loss at every time
    exact = lambda x_t, t: noise - x  # noqa: E731
    assert flow_loss(exact, x, noise, torch.rand(2))[0].item() == pytest.approx(0.0, abs=1e-12)


def test_interpolation_is_the_straight_line_between_image_and_noise():
    x, noise = images(2), images(2, seed=2)
    t = torch.tensor([0.25, 0.75])
    assert torch.allclose(interpolate(x, noise, t)[1], 0.25 * x[1] + 0.75 * noise[1])


def test_one_euler_step_is_noise_minus_the_velocity_at_t1():
    noise = images(3)
    velocity = lambda x, t: torch.sin(x) * (1 + t.view(-1, 1, 1, 1))  # noqa: E731
    out = integrate(velocity, noise, steps=1)
    assert torch.equal(out, noise - velocity(noise, torch.ones(3)))


def test_heun_is_second_order_euler_first_on_a_known_ode():
    """dx/dt = x from t = 1 back to t = 0 gives x(0) = x(1) / e: Heun's error falls ~4x per halving, Euler's ~2x."""
    x1 = torch.ones(1, 1, 1, 1)
    linear = lambda x, t: x  # noqa: E731
    exact = math.exp(-1)
    euler = [abs(integrate(linear, x1, n).item() - exact) for n in (8, 16)]
    heun = [abs(integrate(linear, x1, n, "heun").item() - exact) for n in (8, 16)]
    assert 1.8 < euler[0] / euler[1] < 2.2, euler
    assert 3.6 < heun[0] / heun[1] < 4.4, heun
    assert heun[1] < euler[1] / 10


def test_time_distributions_stay_inside_the_path_and_unknown_ones_are_refused():
    t = sample_times(10_000, "logit_normal", generator=torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1 and abs(t.median().item() - 0.5) < 0.02
    assert abs(sample_times(10_000, "uniform").mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="unknown time distribution 'beta'"):
        sample_times(1, "beta")


def test_sampler_settings_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        SamplerSettings(steps=0)
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        SamplerSettings(solver="rk4")


# ----------------------------------------------------------------------------------------------------- sampling
def test_same_seed_decodes_bit_identically_and_another_seed_differently():
    tok, x = flow_tokenizer(), images()
    with torch.no_grad():
        tokens = tok.encode(x)
        a, b, c = tok.decode(tokens), tok.decode(tokens), tok.decode(tokens, seed=1)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


def test_guidance_one_is_the_conditional_flow_and_zero_is_the_no_token_flow():
    tok, x = flow_tokenizer(), images()
    with torch.no_grad():
        tokens = tok.encode(x)
        inputs = tok.quantizer.decoder_input(tokens.latents)
        condition = tok.decoder.embed_tokens(inputs)
        noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        by_hand = integrate(lambda z, t: tok.decoder.velocity(z, t, condition)[0], noise, 4)
        assert torch.equal(tok.decode(tokens, guidance=1.0), by_hand)
        empty = torch.zeros(4, dtype=torch.long)
        unconditional = tok.decoder(inputs, lengths=empty)
        # guidance 0 keeps only the "no tokens" branch (computed in the batched pass beside the conditional one)
        assert torch.allclose(tok.decode(tokens, guidance=0.0), unconditional, atol=1e-5)
        strong = tok.decode(tokens, guidance=3.0)
        assert (strong - by_hand).abs().mean() > 1e-3
    assert torch.equal(guided(torch.ones(2), torch.zeros(2), 2.5), torch.full((2,), 2.5))


def test_no_tokens_is_one_condition_whatever_the_tokens_and_prefixes_change_the_image():
    tok = flow_tokenizer()
    with torch.no_grad():
        a, b = tok.encode(images(2, seed=1)), tok.encode(images(2, seed=2))
        zero = torch.zeros(2, dtype=torch.long)
        assert torch.equal(tok.decoder(tok.quantizer.decoder_input(a.latents), lengths=zero),
                           tok.decoder(tok.quantizer.decoder_input(b.latents), lengths=zero))
        one = tok.decode(tok.encode(images(2, seed=1), num_tokens=1))
        full = tok.decode(a)
    assert (one - full).abs().mean() > 1e-3


def test_a_set_without_positions_decodes_the_same_in_any_order():
    tok = flow_tokenizer(token_positions=False)
    with torch.no_grad():
        tokens = tok.encode(images(2))
        shuffled = tokens.latents[:, torch.randperm(8, generator=torch.Generator().manual_seed(3))]
        assert torch.allclose(tok.decoder(tok.quantizer.decoder_input(shuffled)),
                              tok.decoder(tok.quantizer.decoder_input(tokens.latents)), atol=1e-5)


def test_a_2d_grid_of_tokens_trains_and_decodes_through_the_flow_decoder():
    """A conv encoder's (B, 8, 8, D) grid is read as 64 tokens with learned positions."""
    from .conftest import tiny_tokenizer_config

    config = tiny_tokenizer_config()
    config["decoder"] = dict(kind="flow", num_tokens=64, patch_size=8, width=32, depth=1, heads=2, image_size=32,
                             sampling=dict(steps=2))
    tok = Tokenizer(**config)
    out = tok(images(2))
    assert out.tokens.layout == (8, 8) and out.decoder_losses["flow"].requires_grad
    out.decoder_losses["flow"].backward()
    assert tok.encoder.parameters().__next__().grad is not None
    with torch.no_grad():
        assert tok.eval().decode(tok.encode(images(2))).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="at most 64"):
        tok.decoder(torch.zeros(1, 9, 9, tok.decoder.from_tokens.in_features))


def test_a_deterministic_decoder_refuses_sampler_settings():
    tok = Tokenizer(encoder=dict(kind="latent_tokens", num_tokens=4, patch_size=8, width=16, depth=1, heads=2,
                                 out_dim=4, image_size=32),
                    quantizer=dict(kind="fsq", levels=[5, 5, 5, 5]),
                    decoder=dict(kind="latent_tokens", num_tokens=4, patch_size=8, width=16, depth=1, heads=2,
                                 image_size=32), image_size=32)
    tokens = tok.encode(images(1))
    with pytest.raises(ValueError, match=r"\['steps'\].*deterministic.*decoder.kind=flow"):
        tok.decode(tokens, steps=4)
    assert not tok.generative and tok.sampling is None


# ------------------------------------------------------------------------------------------------------ training
def test_forward_trains_the_whole_tokenizer_through_the_flow_loss_and_exposes_decoder_features():
    tok = flow_tokenizer(nested_dropout=dict(mode="pow2")).train()
    assert "decoder.block1" in tok.feature_names
    out = tok(images(), features=["decoder.block1"])
    assert set(out.decoder_losses) == {"flow"} and out.reconstruction.shape == (4, 3, 32, 32)
    assert out.features["decoder.block1"].shape == (4, 4, 4, 32)  # (B, h, w, width) patch features
    out.decoder_losses["flow"].backward()
    assert tok.encoder.to_tokens.weight.grad.abs().sum() > 0  # through FSQ's straight-through estimate
    assert tok.decoder.to_pixels.weight.grad.abs().sum() > 0


def test_the_flow_loss_falls_and_decoding_improves_on_a_fixed_batch():
    torch.manual_seed(0)
    tok = Tokenizer(
        encoder=dict(kind="latent_tokens", num_tokens=16, patch_size=8, width=64, depth=2, heads=4, out_dim=4,
                     image_size=32),
        quantizer=dict(kind="fsq", levels=[8, 5, 5, 5]),
        decoder=dict(kind="flow", num_tokens=16, patch_size=8, width=64, depth=2, heads=4, image_size=32,
                     guidance_dropout=0.0, sampling=dict(steps=8)), image_size=32)
    x = torch.nn.functional.interpolate(images(2, seed=4), scale_factor=0.25, mode="bilinear").repeat_interleave(4, -1)
    x = x.repeat_interleave(4, -2)  # smooth images: learnable in a few hundred steps
    held = torch.Generator()
    optimizer = torch.optim.AdamW(tok.parameters(), lr=2e-3)

    def measure() -> tuple[float, float]:
        tok.eval()
        with torch.no_grad():
            tokens = tok.encode(x)
            loss = tok.decoder_loss(tokens, x, generator=held.manual_seed(0)).loss.item()
            error = (tok.decode(tokens) - x).pow(2).mean().item()
        tok.train()
        return loss, error

    before = measure()
    for _ in range(300):
        optimizer.zero_grad()
        tok(x).decoder_losses["flow"].backward()
        optimizer.step()
    after = measure()
    assert after[0] < 0.3 * before[0], (before, after)  # the flow loss at held-out noise and times
    assert after[1] < 0.3 * before[1], (before, after)  # the sampled decode's squared error


# -------------------------------------------------------------------------------------------------- save / load
def test_an_exported_flow_tokenizer_samples_bit_identically_with_its_saved_settings(tmp_path):
    tok = flow_tokenizer()
    tok.decoder.sampling = SamplerSettings(steps=3, guidance=2.0, seed=7, solver="heun")
    tok._config["decoder"]["sampling"] = tok.decoder.sampling.to_dict()
    tok.save_pretrained(str(tmp_path))
    loaded = Tokenizer.from_pretrained(str(tmp_path))
    assert loaded.sampling == SamplerSettings(steps=3, guidance=2.0, seed=7, solver="heun")
    with torch.no_grad():
        tokens = tok.encode(images())
        assert torch.equal(tok.decode(tokens), loaded.decode(tokens))
        assert torch.equal(loaded.decode_indices(tokens.indices, seed=7), loaded.decode(tokens))


# --------------------------------------------------------------------------------------------------- evaluation
def test_evaluation_reports_settings_seeds_steps_and_a_picture_of_seeds(tmp_path):
    tok = flow_tokenizer(nested_dropout=dict(mode="pow2"))
    data = [{"image": images(3, seed=s)} for s in range(2)]
    report = evaluate_to_dir(tok, data, tmp_path, baselines=False,
                             sampling={"steps": 2, "seeds": 2, "compare_steps": [1, 3], "images": 4})
    assert report["sampling"] == {"steps": 2, "guidance": 1.0, "seed": 0, "solver": "euler"}
    assert report["psnr_over_seeds"]["seeds"] == [0, 1] and report["sampling_images"] == 4
    assert report["psnr_over_seeds"]["per_seed"][0] == pytest.approx(
        sum(report["psnr_per_image"][:4]) / 4)  # seed 0 at 2 steps is the main figure on those images
    assert report["psnr_over_seeds"]["std"] > 0
    assert sorted(report["quality_vs_steps"], key=int) == ["1", "2", "3"]
    assert all(v["images_per_second"] > 0 for v in report["quality_vs_steps"].values())
    assert sorted(report["psnr_vs_tokens"], key=int) == ["1", "2", "4", "8"]
    from PIL import Image

    picture = Image.open(report["reconstructions_seeds_path"])
    assert picture.size == (4 * 192, 3 * 192)  # 4 images; originals above one row per seed


def test_a_flow_tokenizers_model_card_says_how_it_samples_and_over_which_seeds(tmp_path):
    from vtok.hub import model_card

    tok = flow_tokenizer()
    report = evaluate_to_dir(tok, [{"image": images(2)}], tmp_path, baselines=False, sampling={"seeds": 2})
    card = model_card(tok, "flow", report, None)
    assert "generative decoder: decoding samples (4 euler steps, guidance 1, seed 0" in card
    assert "PSNR over 2 seeds" in card


def test_a_deterministic_tokenizer_reports_no_sampling():
    tok = Tokenizer(encoder=dict(kind="latent_tokens", num_tokens=4, patch_size=8, width=16, depth=1, heads=2,
                                 out_dim=4, image_size=32),
                    quantizer=dict(kind="fsq", levels=[5, 5, 5, 5]),
                    decoder=dict(kind="latent_tokens", num_tokens=4, patch_size=8, width=16, depth=1, heads=2,
                                 image_size=32), image_size=32).eval()
    report, *_ = evaluate(tok, [{"image": images(2)}], baselines=False, sampling={"seeds": 2})
    assert "sampling" not in report and "psnr_over_seeds" not in report


def test_bf16_autocast_trains_and_samples_with_an_fp32_ode_state():
    tok, x = flow_tokenizer(), images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tok.train()(x).decoder_losses["flow"]
        tok.eval()
        with torch.no_grad():
            low = tok.decode(tok.encode(x))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert low.dtype == torch.float32  # the sampler integrates in fp32 whatever the network's precision
    with torch.no_grad():
        full = tok.decode(tok.encode(x))
    assert (low - full).abs().mean() < 0.05
