"""VectorQuantizer options: SimVQ linear codebook, cosine vs euclidean lookup, mixed precision."""

import pytest
import torch
import torch.nn.functional as F

from vtok.quantizers import VectorQuantizer, build_quantizer
from vtok.quantizers.search import nearest_code


def test_nearest_code_matches_brute_force():
    z, codebook = torch.randn(1000, 6), torch.randn(300, 6)
    brute = torch.cdist(z, codebook).argmin(1)
    assert torch.equal(nearest_code(z, codebook, cosine=False, chunk=128), brute)
    zn, cn = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(codebook, dim=1)
    assert torch.equal(nearest_code(zn, cn, cosine=True, chunk=100), torch.cdist(zn, cn).argmin(1))



@pytest.mark.parametrize("num_codes", [1000, 4096, 4099])
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("dim", [8, 64])  # score blocks codes x rows up to 32 dims, rows x codes above
def test_grouped_search_matches_argmax_and_breaks_ties_to_the_lowest_index(num_codes, cosine, dim):
    """The fp32 search pads the codebook to whole groups of 128 and takes a two-level argmax; blocks of 300
    rows leave a shorter last block. Duplicated codes (exact ties) must resolve to the first copy."""
    torch.manual_seed(0)
    codes, z = torch.randn(num_codes, dim), torch.randn(1000, dim)
    codes[-5:] = codes[:5]  # later duplicates of the first codes, in another group
    codes[130] = codes[7]
    z[:5] = codes[:5]
    z[5] = codes[7]
    if cosine:
        codes, z = F.normalize(codes, dim=1), F.normalize(z, dim=1)
    scores = z @ codes.t() if cosine else -torch.cdist(z, codes)
    found = nearest_code(z, codes, cosine=cosine, chunk=300)
    best = scores.max(1, keepdim=True).values
    assert torch.allclose(scores.gather(1, found[:, None]), best, atol=1e-5)  # a nearest code, up to rounding
    assert torch.equal(found[:6], torch.tensor([0, 1, 2, 3, 4, 7]))  # first of each duplicated pair


def test_linear_codebook_learns_through_the_map_and_round_trips():
    vq = VectorQuantizer(dim=8, codebook_size=64, codebook_dim=4, linear_codebook=True)
    assert not isinstance(vq.codebook, torch.nn.Parameter)
    z = torch.randn(256, 8, requires_grad=True)
    out = vq(z)
    sum(out.losses.values()).backward()
    assert vq.codebook_map.weight.grad.abs().sum() > 0
    vq.eval()
    out = vq(z)
    assert torch.equal(vq.indices_to_codes(out.indices), out.quantized)


def test_linear_codebook_restart_places_codes_on_data():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=4, codebook_size=16, l2_normalize=False, linear_codebook=True, data_init=False,
                         restart_threshold=0.5, restart_decay=0.1)
    with torch.no_grad():
        vq.codebook_map.weight.mul_(3.0)  # a non-identity map: restarts must invert it
    data = torch.randn(64, 4) + 4.0
    vq(data)
    codes = vq.codes().detach()
    # every restarted code equals one of the batch rows
    restarted = (torch.cdist(codes, data).min(1).values < 1e-4).sum()
    assert restarted >= 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gives_finite_fp32_losses(dtype):
    vq = build_quantizer({"kind": "vq", "dim": 16, "codebook_size": 128, "codebook_dim": 8})
    z = torch.randn(4, 64, 16) * 100  # large activations overflow fp16 products if done in half precision
    with torch.autocast("cpu", dtype=dtype):
        out = vq(z.to(dtype))
    assert out.quantized.dtype == dtype
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.losses.values())


def test_unknown_quantizer_kind():
    with pytest.raises(ValueError, match="unknown quantizer kind 'x'; choose one of"):
        build_quantizer({"kind": "x"})


def test_entropy_loss_spreads_vq_codes():
    """Codes initialised off to one side of the data: with gradient updates alone a few win every feature; the
    entropy term (no restarts) pulls the rest in."""

    def used_codes(entropy_weight: float) -> int:
        torch.manual_seed(0)
        vq = VectorQuantizer(dim=4, codebook_size=64, l2_normalize=False, data_init=False,
                             entropy_weight=entropy_weight)
        with torch.no_grad():
            vq.codebook.copy_(torch.randn(64, 4) * 0.1 + 3.0)
        optimizer = torch.optim.Adam(vq.parameters(), lr=0.02)
        for _ in range(300):
            out = vq(torch.randn(512, 4))
            optimizer.zero_grad()
            sum(out.losses.values()).backward()
            optimizer.step()
        vq.eval()
        return torch.unique(vq(torch.randn(8192, 4)).indices).numel()

    without, with_entropy = used_codes(0.0), used_codes(0.5)
    assert with_entropy >= 48, (without, with_entropy)
    assert with_entropy >= 2 * without, (without, with_entropy)


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("dim", [8, 256])
def test_bf16_search_finds_the_exact_nearest_code(cosine, dim):
    """Random rows, and rows within 1% of a code (near-ties between bf16 scores): the same index as fp32."""
    torch.manual_seed(0)
    codes = torch.randn(2048, dim)
    picks = codes[torch.randint(2048, (1500,))]
    for z in (torch.randn(1500, dim), picks + 0.01 * torch.randn(1500, dim)):
        c, z = (F.normalize(codes, dim=1), F.normalize(z, dim=1)) if cosine else (codes, z)
        exact = nearest_code(z, c, cosine=cosine, chunk=512)
        assert torch.equal(nearest_code(z, c, cosine=cosine, chunk=512, precision="bf16"), exact)


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("dim", [8, 256])
def test_bf16_and_fp32_search_break_exact_ties_alike(cosine, dim):
    """Exact ties, bit for bit: small-integer codes (duplicated, so ties are certain) and rows at codes and at
    midpoints of two codes, so every score is exact in fp32 whatever the summation order, and both searches must
    return the lowest tied index."""
    torch.manual_seed(0)
    codes = torch.randint(-8, 9, (2048, dim)).float()
    codes[1024:] = codes[:1024]  # every code twice, in another group
    first, second = torch.randint(1024, (2, 1500))
    midpoints = (codes[first] + codes[second]) / 2
    for z in (codes[first],) if cosine else (codes[first], midpoints):  # cosine: the duplicates are the ties
        exact = nearest_code(z, codes, cosine=cosine, chunk=512)
        assert torch.equal(nearest_code(z, codes, cosine=cosine, chunk=512, precision="bf16"), exact)
        assert bool((exact < 1024).all())  # the first copy of a duplicated code
        scores = z @ codes.t() - (0 if cosine else 0.5 * codes.pow(2).sum(1))
        assert torch.equal(scores.gather(1, exact[:, None])[:, 0], scores.max(1).values)


@pytest.mark.parametrize("dim", [32, 256])
def test_bf16_search_is_exact_with_code_norms_over_three_decades(dim):
    """The bias ``-|c|^2 / 2`` then spans six decades and decides most rows; rows sit near a code (scaled by
    1 +- 1e-3) and far from the origin, where the window is widest relative to the gaps between scores."""
    torch.manual_seed(1)
    codes = torch.randn(3000, dim) * torch.logspace(-2, 1, 3000)[torch.randperm(3000)][:, None]
    z = codes[torch.randint(3000, (2000,))] * (1 + 1e-3 * torch.randn(2000, 1)) + 1e-3 * torch.randn(2000, dim)
    for rows in (z, z + 5.0, 3 * torch.randn(2000, dim)):
        assert torch.equal(nearest_code(rows, codes, cosine=False, precision="bf16"),
                           nearest_code(rows, codes, cosine=False))


def test_bf16_search_sends_rows_it_cannot_score_to_the_fp32_search():
    """A non-finite row has no bf16 window; it must get the fp32 search's answer, not an index past the codes."""
    torch.manual_seed(0)
    codes, z = torch.randn(300, 64), torch.randn(50, 64)
    z[3] = float("nan")
    z[7, 0] = float("inf")
    fast = nearest_code(z, codes, cosine=False, precision="bf16")
    assert torch.equal(fast, nearest_code(z, codes, cosine=False))
    assert int(fast.max()) < 300


def test_auto_search_keeps_narrow_lookups_in_fp32_on_cpus():
    """bf16 pays on CPUs (with AMX) only for wide lookups; a narrow one stays fp32 whatever the codebook size."""
    cpu = torch.device("cpu")
    assert VectorQuantizer(dim=256, codebook_size=2**17, codebook_dim=8)._search_precision(cpu) == "fp32"
    assert VectorQuantizer(dim=256, codebook_size=64)._search_precision(cpu) == "fp32"  # too small to pay
    amx = torch.cpu._is_amx_tile_supported()
    assert VectorQuantizer(dim=256, codebook_size=16384)._search_precision(cpu) == ("bf16" if amx else "fp32")


def test_vq_search_option():
    z = torch.randn(64, 8)
    outputs = [VectorQuantizer(dim=8, codebook_size=32, search=s).eval() for s in ("fp32", "bf16")]
    outputs[1].load_state_dict(outputs[0].state_dict())
    assert torch.equal(outputs[0](z).indices, outputs[1](z).indices)
    with pytest.raises(ValueError, match="search='fast'"):
        VectorQuantizer(dim=8, codebook_size=32, search="fast")
