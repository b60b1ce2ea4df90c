"""Tokenizer families: ViT grid, 1D latent tokens (flexible length, adaptive budget), binary 1D, continuous,
the expander hook, and every preset in configs/experiment at toy size."""


import lightning as L
import pytest
import torch
import torch.nn.functional as F

from vtok import Tokenizer
from vtok.eval.evaluate import evaluate_to_dir
from vtok.modules.transformer import apply_rope, grid_positions, rope_2d
from vtok.tokenizers.nested_dropout import NestedDropout, budget_ladder
from vtok.training.run import build

from .conftest import ROOT

VIT = {"patch_size": 4, "width": 32, "depth": 1, "heads": 2, "image_size": 16}
LATENT = {"num_tokens": 8, **VIT}
FAMILIES = {
    "vit_vq": ({"kind": "vit", "out_dim": 8, **VIT}, {"kind": "vq", "codebook_size": 64, "codebook_dim": 4},
               {"kind": "vit", **VIT}),
    "vit_rope_kl": ({"kind": "vit", "out_dim": 8, "position": "rope", **VIT}, {"kind": "gaussian", "latent_dim": 4},
                    {"kind": "vit", "position": "rope", **VIT}),
    "latent_vq": ({"kind": "latent_tokens", "out_dim": 8, **LATENT},
                  {"kind": "vq", "codebook_size": 64, "l2_normalize": False}, {"kind": "latent_tokens", **LATENT}),
    "latent_fsq_nested": ({"kind": "latent_tokens", "out_dim": 4, **LATENT}, {"kind": "fsq", "levels": [8, 8, 8, 8]},
                          {"kind": "latent_tokens", "nested_dropout": {"mode": "pow2"}, **LATENT}),
    "latent_binary": ({"kind": "latent_tokens", "out_dim": 16, **LATENT}, {"kind": "bernoulli", "bits": 16},
                      {"kind": "latent_tokens", **LATENT}),
    "conv_continuous": ({"kind": "conv", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "out_dim": 8},
                        {"kind": "continuous"}, {"kind": "conv", "channels": 16, "channel_mult": [1, 2],
                                                 "num_res_blocks": 1}),
}


def _images(n=4, seed=0):
    low = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_learns_a_few_images(family):
    encoder, quantizer, decoder = FAMILIES[family]
    tokenizer = Tokenizer(encoder, quantizer, decoder, image_size=16)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=2e-3)
    images = _images()
    losses = []
    for _ in range(150):
        output = tokenizer(images)
        loss = F.mse_loss(output.reconstruction, images) + sum(output.losses.values(), torch.tensor(0.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(F.mse_loss(output.reconstruction, images).item())
    assert min(losses[-10:]) < losses[0] / 3, (losses[0], losses[-10:])


def test_1d_tokens_decode_at_every_length():
    encoder, quantizer, decoder = FAMILIES["latent_fsq_nested"]
    tokenizer = Tokenizer(encoder, quantizer, decoder, image_size=16).eval()
    assert tokenizer.flexible and tokenizer.num_tokens() == 8
    images = _images(2)
    full = tokenizer.encode(images)
    for k in range(1, 9):
        tokens = tokenizer.encode(images, num_tokens=k)
        assert tokens.layout == (k,) and tokens.indices.shape == (2, k) and tokens.latents.shape == (2, k, 4)
        assert torch.equal(tokens.indices, full.indices[:, :k])
        decoded = tokenizer.decode(tokens)
        assert decoded.shape == images.shape
        assert torch.equal(decoded, tokenizer.decode_indices(tokens.indices))
        # a prefix of k tokens is the same as all tokens with lengths = k
        assert torch.allclose(decoded, tokenizer.decode_indices(full.indices, torch.full((2,), k)), atol=1e-5)
    with pytest.raises(ValueError, match=r"num_tokens=9 must lie in 1\.\.8"):
        tokenizer.encode(images, num_tokens=9)


def test_grid_tokenizers_refuse_a_token_budget():
    encoder, quantizer, decoder = FAMILIES["vit_vq"]
    tokenizer = Tokenizer(encoder, quantizer, decoder, image_size=16).eval()
    with pytest.raises(ValueError, match="need a 1D tokenizer"):
        tokenizer.encode(_images(1), num_tokens=2)


def test_vit_grid_encodes_other_image_sizes():
    for position in ("learned", "rope"):
        encoder, _, decoder = FAMILIES["vit_vq"]
        tokenizer = Tokenizer({**encoder, "position": position}, {"kind": "fsq", "levels": [5, 5, 5]},
                              {**decoder, "position": position}, image_size=16).eval()
        tokens = tokenizer.encode(torch.zeros(1, 3, 24, 32))
        assert tokens.layout == (6, 8) and tokenizer.decode(tokens).shape == (1, 3, 24, 32)


def test_rope_is_relative_and_identity_at_the_origin():
    q, k = torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8)
    cos, sin = rope_2d(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), 8)
    assert torch.allclose(apply_rope(q, cos, sin), q)
    a = rope_2d(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), 8)
    b = rope_2d(torch.tensor([[11.0, 12.0], [13.0, 15.0]]), 8)  # both shifted by (10, 10)
    def dot(rope):
        return (apply_rope(q, *rope)[..., 0, :] * apply_rope(k, *rope)[..., 1, :]).sum()
    assert torch.allclose(dot(a), dot(b), atol=1e-4)
    assert grid_positions(2, 3).tolist()[0] == [1.0, 1.0]


def test_nested_dropout_draws():
    torch.manual_seed(0)
    assert budget_ladder(8) == [1, 2, 4, 8] and budget_ladder(6) == [1, 2, 4, 6]
    drawn = NestedDropout(8, mode="pow2")(4000)
    assert set(drawn.tolist()) == {1, 2, 4, 8}
    half = NestedDropout(8, mode="uniform", p=0.5)(4000)
    assert set(half.tolist()) == set(range(1, 9)) and 0.5 < (half == 8).float().mean() < 0.62


def test_expander_output_is_exposed_and_trained():
    encoder, _, decoder = FAMILIES["vit_vq"]
    tokenizer = Tokenizer(encoder, {"kind": "continuous", "latent_dim": 4}, decoder, image_size=16,
                          expander={"kind": "transformer", "width": 32, "depth": 1, "heads": 2, "out_dim": 24})
    output = tokenizer(_images(2))
    assert output.tokens.latents.shape == (2, 4, 4, 4) and output.features["expanded"].shape == (2, 4, 4, 24)
    output.features["expanded"].pow(2).mean().backward()
    assert tokenizer.encoder.to_tokens.weight.grad.abs().sum() > 0
    assert Tokenizer(**tokenizer.config).expander is not None  # the hook is part of the saved definition


@pytest.fixture(scope="module")
def flexible_tokenizer():
    """A 1D tokenizer with nested dropout fit to 32 images (one flat). Its tokens are FSQ [3, 3], 9 codes each, so
    one token cannot tell the images apart: later tokens must carry detail."""
    torch.manual_seed(0)
    encoder, _, decoder = FAMILIES["latent_fsq_nested"]
    tokenizer = Tokenizer({**encoder, "out_dim": 2}, {"kind": "fsq", "levels": [3, 3]},
                          {**decoder, "nested_dropout": {"mode": "uniform"}}, image_size=16)
    flat = torch.full((1, 3, 16, 16), 0.3)
    noise = 0.3 * torch.randn(31, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    images = torch.cat([flat, (_images(31, seed=3) + noise).clamp(-1, 1)])
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=2e-3)
    for _ in range(400):
        loss = F.mse_loss(tokenizer(images).reconstruction, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tokenizer.eval(), images


def _psnr(reconstruction, images):
    return 10 * torch.log10(4 / (reconstruction.clamp(-1, 1) - images).pow(2).flatten(1).mean(1))


def test_adaptive_budget_gives_a_flat_image_fewer_tokens(flexible_tokenizer):
    tokenizer, images = flexible_tokenizer
    with torch.no_grad():
        full = _psnr(tokenizer.decode(tokenizer.encode(images)), images)
        target = float(full[1:].mean()) - 0.2
        tokens = tokenizer.encode(images, target_psnr=target)
        reached = _psnr(tokenizer.decode(tokens), images)
    lengths = tokens.lengths.float()
    assert lengths[0] < lengths[1:].mean(), lengths.tolist()
    # a budget below K is only chosen where it reaches the target
    assert (reached[lengths < 8] >= target - 1e-3).all()


def test_evaluation_writes_quality_against_tokens(flexible_tokenizer, tmp_path):
    tokenizer, images = flexible_tokenizer
    report = evaluate_to_dir(tokenizer, [{"image": images}], tmp_path, baselines=False, target_psnr=20.0)
    assert list(report["psnr_vs_tokens"]) == ["1", "2", "4", "8"]
    assert report["psnr_vs_tokens"]["8"] > report["psnr_vs_tokens"]["2"] > report["psnr_vs_tokens"]["1"]
    assert set(report["adaptive_tokens"]) == {"target_psnr", "mean", "std", "min", "max", "psnr"}
    assert (tmp_path / "quality_vs_tokens.png").stat().st_size > 0


@pytest.mark.slow
def test_nested_dropout_training_orders_held_out_quality():
    """A short training (1,200 steps of 32) with tail-token drop on synthetic shapes; measured on 64 images it never
    saw. Per-image mean colour alone gives ~16.1 dB there, so beating K/4 tokens by a margin needs spatial detail
    carried by the later tokens."""
    from vtok.data.synthetic import SyntheticCaptions
    from vtok.eval.evaluate import evaluate

    torch.manual_seed(0)
    shape = {"patch_size": 4, "width": 64, "depth": 2, "heads": 4, "image_size": 16, "num_tokens": 8}
    tokenizer = Tokenizer({"kind": "latent_tokens", "out_dim": 4, **shape}, {"kind": "fsq", "levels": [8, 8, 8, 8]},
                          {"kind": "latent_tokens", "nested_dropout": {"mode": "uniform"}, **shape}, image_size=16)
    train, held_out = SyntheticCaptions(4096, 16, seed=0), SyntheticCaptions(64, 16, seed=1)
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    for _ in range(1200):
        batch = images[torch.randint(len(images), (32,))]
        loss = F.mse_loss(tokenizer(batch).reconstruction, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    test_images = torch.stack([held_out[i]["image"] for i in range(len(held_out))])
    report, *_ = evaluate(tokenizer.eval(), [{"image": test_images}], baselines=False)
    quality = report["psnr_vs_tokens"]
    assert quality["8"] > quality["2"] + 0.3, quality
    assert quality["8"] > 16.5, quality  # above the mean-colour plateau


PRESETS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


class _StepLosses(L.Callback):
    """Each training step's loss, as the step returned it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


STEPS = 10


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_learns_a_fixed_batch_at_toy_size(preset, compose_run):
    """Every preset at toy size (scale=toy alone makes each trainable offline) trains on one fixed batch (one
    synthetic image, repeated) and its loss falls: the mean of the last steps under that of the first."""
    # the adversarial term from step 0 (IBQ, Open-MAGVIT2) makes a total that need not fall: start it later
    later_gan = ["loss.disc_start=1000"] if preset in ("ibq", "open_magvit2") else []
    if preset == "aurora_depth":  # one-channel inputs: the synthetic images' luminance stands in for depth
        later_gan = ["+data.train.channels=1", "+data.val.channels=1"]
    cfg = compose_run(f"experiment={preset}", "data=synthetic", "logger=none", "data.train.length=1",
                      "data.batch_size=2", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000",
                      "trainer.limit_val_batches=0", "module.lr=3e-3", "module.min_lr_ratio=1.0", *later_gan)
    module, datamodule, trainer = build(cfg)
    steps = _StepLosses()
    trainer.callbacks.append(steps)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == STEPS and len(steps.losses) == STEPS
    first, last = sum(steps.losses[:3]) / 3, sum(steps.losses[-3:]) / 3
    # The batch is fixed and nothing is random, so any fall is learning. A caption loss through a random toy LLM
    # falls slowly: -0.3 to -1% in 10 steps where the tokenizer is frozen, -7% end to end; the vocabulary term
    # trains only its new rows against a frozen toy LLM (-2.7% measured); the rest fall 20-95%.
    bound = {"ett_align": 0.998, "ett_sft": 0.998, "ett_e2e": 0.97, "llm_vocabulary": 0.99}.get(preset, 0.9)
    assert last < bound * first, (preset, [round(x, 4) for x in steps.losses])
