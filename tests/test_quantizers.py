"""Every bottleneck kind: gradients, exact index round trips, learning a toy target, entropy maths, memory."""


import pytest
import torch
from torch import Tensor

from vtok.quantizers import QUANTIZERS, build_quantizer
from vtok.quantizers.entropy import codebook_entropy_exact, codebook_entropy_factorized, per_sample_entropy
from vtok.quantizers.lfq import bits_to_indices, indices_to_bits

from .helpers import peak_memory_growth_mib


# Brute-force references: the full N x 2^d probability matrix the fast entropies avoid.
def codebook_entropy_brute_force(logits: Tensor) -> Tensor:
    """Reference: the full ``N x 2^d`` probability matrix (small ``d``)."""
    d = logits.shape[1]
    codes = torch.arange(2**d, device=logits.device)
    bits = ((codes.unsqueeze(-1) & (2 ** torch.arange(d, device=logits.device))) > 0).to(logits.dtype)
    p = torch.sigmoid(logits)
    probs = (bits * p.unsqueeze(1) + (1 - bits) * (1 - p.unsqueeze(1))).prod(-1)  # (N, 2^d)
    mean = probs.mean(0)
    return -(mean * mean.clamp_min(1e-30).log()).sum()


def per_sample_entropy_brute_force(logits: Tensor) -> Tensor:
    """Reference for :func:`per_sample_entropy` (small ``d``)."""
    d = logits.shape[1]
    codes = torch.arange(2**d, device=logits.device)
    bits = ((codes.unsqueeze(-1) & (2 ** torch.arange(d, device=logits.device))) > 0).to(logits.dtype)
    p = torch.sigmoid(logits)
    probs = (bits * p.unsqueeze(1) + (1 - bits) * (1 - p.unsqueeze(1))).prod(-1)
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()


DIM = 16
KINDS = {
    "vq": {"codebook_size": 64, "codebook_dim": 4},
    "vq_simvq": {"kind": "vq", "codebook_size": 64, "codebook_dim": 4, "linear_codebook": True},
    "vq_rotation": {"kind": "vq", "codebook_size": 64, "codebook_dim": 4, "gradient": "rotation"},
    "vq_ibq": {"kind": "vq", "codebook_size": 64, "codebook_dim": 4, "gradient": "ibq"},
    "vq_ema": {"kind": "vq", "codebook_size": 64, "codebook_dim": 4, "ema_decay": 0.9, "l2_normalize": False},
    "fsq": {"levels": [8, 5, 5, 5]},
    "lfq": {"bits": 10},
    "bsq": {"bits": 10},
    "bernoulli": {"bits": 10},
    "residual": {"depth": 3, "quantizer": {"kind": "vq", "codebook_size": 32, "codebook_dim": 4}},
    "residual_fsq": {"kind": "residual", "depth": 2, "stage_scale": 0.25,
                     "quantizer": {"kind": "fsq", "levels": [8, 8, 8]}},
    "multi_codebook": {"groups": 4, "quantizer": {"kind": "vq", "codebook_size": 32}},
    "gaussian": {},
    "continuous": {"noise_std": 0.1},
    "dual": {"semantic_dim": 8, "codebook_size": 64},
    "dual_pair": {"kind": "dual", "semantic_dim": 8, "codebook_size": 64, "shared_index": False,
                  "l2_normalize": False, "decode_from": "both"},
}


def make(name: str):
    config = {"kind": name, **KINDS[name]} if "kind" not in KINDS[name] else dict(KINDS[name])
    return build_quantizer({**config, "dim": DIM})


def test_every_registered_kind_is_covered():
    assert {KINDS[n].get("kind", n) for n in KINDS} == set(QUANTIZERS)


@pytest.mark.parametrize("name", list(KINDS))
def test_gradients_flow_to_the_input(name):
    q = make(name)
    z = torch.randn(4, 6, DIM, requires_grad=True)
    out = q(z)
    loss = out.quantized.pow(2).mean() + sum(out.losses.values(), torch.zeros(()))
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(torch.isfinite(v) for v in out.losses.values())


@pytest.mark.parametrize("name", [n for n in KINDS if n not in ("gaussian", "continuous")])
def test_indices_round_trip_exactly(name):
    q = make(name).eval()
    z = torch.randn(3, 7, DIM)
    out = q(z)
    assert out.indices.dtype == torch.long
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size


@pytest.mark.parametrize("name", ["fsq", "lfq", "bsq", "bernoulli"])
def test_codes_to_indices_inverts_indices_to_codes(name):
    q = make(name)
    ids = torch.randint(0, q.codebook_size, (500,))
    levels = q.indices_to_levels(ids) if name == "fsq" else torch.where(
        __import__("vtok.quantizers.lfq", fromlist=["indices_to_bits"]).indices_to_bits(ids, q.bits), 1.0, -1.0)
    assert torch.equal(q.codes_to_indices(levels), ids)


@pytest.mark.parametrize("name", list(KINDS))
def test_learns_a_toy_target(name):
    """Encoder -> bottleneck -> decoder learns to reconstruct clustered data; loss falls by at least 3x.

    The 16 cluster centres lie in a 3-d subspace, so a linear decoder from any bottleneck of 3 or more
    channels can reach them.
    """
    torch.manual_seed(0)
    centres = torch.randn(16, 3) @ torch.randn(3, DIM)
    encoder, decoder = torch.nn.Linear(DIM, DIM), torch.nn.Linear(make(name).out_dim, DIM)
    q = make(name)
    params = [*encoder.parameters(), *decoder.parameters(), *q.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)

    def loss_on(x):
        out = q(encoder(x))
        return torch.nn.functional.mse_loss(decoder(out.quantized), x), out

    probe = centres[torch.randint(0, 16, (512,))] + 0.05 * torch.randn(512, DIM)
    with torch.no_grad():
        q.eval()
        before = loss_on(probe)[0].item()
        q.train()
    for _ in range(300):
        x = centres[torch.randint(0, 16, (256,))] + 0.05 * torch.randn(256, DIM)
        rec, out = loss_on(x)
        optimizer.zero_grad()
        (rec + sum(out.losses.values(), torch.zeros(()))).backward()
        optimizer.step()
    with torch.no_grad():
        q.eval()
        after = loss_on(probe)[0].item()
    assert after < before / 3, (before, after)


def test_per_sample_entropy_factorises_exactly():
    logits = torch.randn(64, 7, dtype=torch.float64) * 3
    assert torch.allclose(per_sample_entropy(logits), per_sample_entropy_brute_force(logits))


@pytest.mark.parametrize("bits", [1, 7, 8])
def test_split_codebook_entropy_is_exact_and_factorised_is_an_upper_bound(bits):
    logits = torch.randn(64, bits, dtype=torch.float64) * 2
    exact = codebook_entropy_brute_force(logits)
    assert torch.allclose(codebook_entropy_exact(logits), exact)
    assert codebook_entropy_factorized(logits) >= exact - 1e-9


def test_exact_codebook_entropy_gradient_matches_brute_force_and_stays_finite_at_low_temperature():
    logits = (torch.randn(32, 6, dtype=torch.float64) * 2).requires_grad_()
    grad_split, = torch.autograd.grad(codebook_entropy_exact(logits), logits)
    grad_brute, = torch.autograd.grad(codebook_entropy_brute_force(logits), logits)
    assert torch.allclose(grad_split, grad_brute)
    sharp = (torch.randn(4096, 16) * 400).requires_grad_()  # T = 0.01: probabilities saturate to 0 / 1
    entropy = codebook_entropy_exact(sharp)
    entropy.backward()
    assert torch.isfinite(entropy) and torch.isfinite(sharp.grad).all()
    # fp32 keeps full precision: no cancellation between large log-probabilities
    assert abs(entropy.item() - codebook_entropy_exact(sharp.detach().double()).item()) < 1e-5


def test_lfq_reports_which_entropy_it_uses():
    assert build_quantizer({"kind": "lfq", "bits": 10}).exact_codebook_entropy
    assert build_quantizer({"kind": "lfq", "bits": 18}).exact_codebook_entropy
    assert not build_quantizer({"kind": "lfq", "bits": 19}).exact_codebook_entropy
    assert not build_quantizer({"kind": "lfq", "bits": 10, "codebook_entropy": "factorized"}).exact_codebook_entropy
    with pytest.raises(ValueError, match="codebook_entropy"):
        build_quantizer({"kind": "lfq", "bits": 10, "codebook_entropy": "approx"})


@pytest.mark.parametrize("kind,bits", [("lfq", 18), ("lfq", 32), ("bsq", 32)])
def test_huge_binary_codebooks_run_in_bounded_memory(kind, bits):
    """Forward and backward of 8,192 tokens over 2^bits codes, measured in a fresh process (a whole codebook at
    32 bits would take 16 GiB for the codes alone)."""
    setup = ("import torch\nfrom vtok.quantizers import build_quantizer\n"
             f"q = build_quantizer({{'kind': '{kind}', 'bits': {bits}, 'dim': 64}})\n"
             "z = torch.randn(8192, 64, requires_grad=True)")
    work = ("out = q(z)\n(out.quantized.mean() + sum(out.losses.values())).backward()\n"
            f"assert q.codebook_size == 2**{bits} and out.indices.max() < 2**{bits}\n"
            "assert 'unique_codes_batch' in out.stats")
    grown_mib = peak_memory_growth_mib(setup, work)
    assert grown_mib < 1024, grown_mib


def test_entropy_loss_spreads_lfq_codes():
    """With the entropy term, a collapsed start spreads over (almost) all codes; without it, few are used."""

    def unique_codes(entropy_weight: float) -> int:
        torch.manual_seed(0)
        q = build_quantizer({"kind": "lfq", "bits": 8, "dim": 8, "entropy_weight": entropy_weight,
                             "temperature": 0.5})
        bias = torch.nn.Parameter(torch.full((8,), 2.0))  # every bit starts positive: one code
        optimizer = torch.optim.Adam([bias, *q.parameters()], lr=0.05)
        for _ in range(200):
            out = q(0.5 * torch.randn(1024, 8) + bias)
            optimizer.zero_grad()
            sum(out.losses.values()).backward()
            optimizer.step()
        q.eval()
        return torch.unique(q(0.5 * torch.randn(4096, 8) + bias).indices).numel()

    without, with_entropy = unique_codes(0.0), unique_codes(1.0)
    assert with_entropy >= 200  # of 256
    assert with_entropy >= 4 * without


def test_sixty_four_bit_tokens_are_one_exact_int64_each():
    # every bit pattern, including those with bit 63 (int64's sign bit) set, has its own id and reads back exactly
    bits = torch.rand(4096, 64) > 0.5
    bits[0], bits[1], bits[2] = True, False, torch.arange(64) == 63
    ids = bits_to_indices(bits)
    assert ids.dtype == torch.int64 and (ids < 0).any() and (ids > 0).any()
    assert torch.equal(indices_to_bits(ids, 64), bits)
    assert torch.unique(ids).numel() == torch.unique(bits, dim=0).shape[0]
    assert ids[1] == 0 and ids[2] == torch.iinfo(torch.int64).min and ids[0] == -1
    for kind in ("bernoulli", "lfq"):
        with pytest.raises(ValueError, match=r"1\.\.64"):
            build_quantizer({"kind": kind, "bits": 65})


def test_instella_preset_tokens_carry_all_64_bits(compose_run):
    from hydra.utils import instantiate

    cfg = compose_run("experiment=instella_binary_1d", "data=synthetic")
    assert cfg.quantizer.bits == 64  # the preset's own setting, at toy width
    tokenizer = instantiate(cfg.model).eval()
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = tokenizer.encode(images)
    assert tokenizer.vocab_size == 2**64 and tokenizer.bits_per_token == 64
    assert torch.equal(tokenizer.embed(tokens.indices), tokens.latents)  # ids -> codes exactly
    assert torch.equal(tokenizer.decode_indices(tokens.indices), tokenizer.decode(tokens))
    flipped = tokens.indices ^ torch.iinfo(torch.int64).min  # the same tokens with bit 63 flipped: negative ids
    assert (flipped < 0).any()
    assert torch.equal(indices_to_bits(flipped, 64)[..., :63], indices_to_bits(tokens.indices, 64)[..., :63])
    assert not torch.equal(indices_to_bits(flipped, 64)[..., 63], indices_to_bits(tokens.indices, 64)[..., 63])
    assert not torch.equal(tokenizer.embed(flipped), tokens.latents)  # bit 63 reaches the code vector


def test_bernoulli_samples_in_training_and_thresholds_in_eval():
    q = build_quantizer({"kind": "bernoulli", "bits": 64, "dim": 64})
    z = torch.zeros(2000, 64)  # p = 0.5 everywhere
    train_bits = q(z).indices
    assert torch.unique(train_bits).numel() > 1900  # sampled: almost all distinct
    q.eval()
    assert torch.unique(q(z).indices).numel() == 1  # thresholded: all the same


def test_gaussian_kl_is_zero_for_standard_normal_posterior():
    q = build_quantizer({"kind": "gaussian", "dim": 8, "kl_weight": 1.0})
    z = torch.zeros(10, 8)  # mean 0, log-variance 0
    out = q(z)
    assert out.indices is None and out.quantized.shape == (10, 4)
    assert torch.isclose(out.losses["kl"], torch.tensor(0.0), atol=1e-7)
    q.eval()
    assert torch.equal(q(z).quantized, torch.zeros(10, 4))


def test_ibq_sends_gradient_to_every_code_and_ste_only_to_chosen_ones():
    z = torch.randn(32, DIM)
    grads = {}
    for gradient in ("ste", "ibq"):
        torch.manual_seed(0)
        q = build_quantizer({"kind": "vq", "dim": DIM, "codebook_size": 256, "codebook_dim": 4,
                             "gradient": gradient, "data_init": False, "codebook_weight": 0.0})
        q(z).quantized.pow(2).sum().backward()
        grads[gradient] = q.codebook.grad
    assert grads["ste"] is None  # no codebook loss: straight-through leaves the codebook without gradient
    assert (grads["ibq"].abs().sum(1) > 0).float().mean() == 1.0


def test_rotation_trick_changes_the_encoder_gradient_but_not_the_value():
    z = torch.randn(64, DIM)
    outs = {}
    for gradient in ("ste", "rotation"):
        torch.manual_seed(0)
        q = build_quantizer({"kind": "vq", "dim": DIM, "codebook_size": 32, "codebook_dim": 4,
                             "gradient": gradient, "l2_normalize": False, "data_init": False})
        x = z.clone().requires_grad_()
        out = q(x)
        out.quantized.pow(2).sum().backward()
        outs[gradient] = (out.quantized.detach(), x.grad)
    assert torch.equal(outs["ste"][0], outs["rotation"][0])
    assert not torch.allclose(outs["ste"][1], outs["rotation"][1])


def test_rotation_trick_gradient_is_the_closed_form():
    """The rotation trick (Fifty et al., 2024): q = lambda R z with R the rotation taking z's direction to q's and
    lambda = |q| / |z|, both held constant, so the encoder gets ``lambda R^T dL/dq``. R is built here as the
    explicit matrix ``I - 2 r r^T + 2 q^ z^T`` (``r`` the unit bisector of ``z^`` and ``q^``) in float64."""
    torch.manual_seed(0)
    dim = 6
    q = build_quantizer({"kind": "vq", "dim": dim, "codebook_size": 16, "codebook_dim": None,
                         "gradient": "rotation", "l2_normalize": False, "data_init": False})
    z = torch.randn(32, dim, requires_grad=True)
    upstream = torch.randn(32, dim)
    out = q(z)
    (out.quantized * upstream).sum().backward()
    codes = q.codebook.detach()[out.indices].double()
    expected = []
    for row, code, g in zip(z.detach().double(), codes, upstream.double(), strict=True):
        z_hat, q_hat = row / row.norm(), code / code.norm()
        r = (z_hat + q_hat) / (z_hat + q_hat).norm()
        rotation = torch.eye(dim, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, z_hat)
        assert torch.allclose(rotation @ z_hat, q_hat, atol=1e-10)  # it is the rotation it should be
        assert torch.allclose(rotation.T @ rotation, torch.eye(dim, dtype=torch.float64), atol=1e-10)
        expected.append(code.norm() / row.norm() * rotation.T @ g)
    assert torch.allclose(z.grad.double(), torch.stack(expected), atol=1e-5)
    assert not torch.allclose(z.grad, upstream, atol=1e-3)  # not straight-through


def test_ema_codebook_moves_to_the_data_without_gradients():
    torch.manual_seed(0)
    q = build_quantizer({"kind": "vq", "dim": 4, "codebook_size": 8, "ema_decay": 0.5, "l2_normalize": False,
                         "data_init": False})
    data = torch.randn(512, 4) * 0.1 + 3.0
    for _ in range(20):
        q(data)
    used = torch.unique(q.eval()(data).indices)
    assert (q.codebook[used] - 3.0).abs().max() < 0.5
    assert not any(p.requires_grad for n, p in q.named_parameters() if "codebook" in n)
