"""VectorQuantizer options: SimVQ linear codebook, cosine vs euclidean lookup, mixed precision."""

import pytest
import torch

from vtok.quantizers import VectorQuantizer, build_quantizer
from vtok.quantizers.vq import nearest_code


def test_nearest_code_matches_brute_force():
    z, codebook = torch.randn(1000, 6), torch.randn(300, 6)
    brute = torch.cdist(z, codebook).argmin(1)
    assert torch.equal(nearest_code(z, codebook, cosine=False, chunk=128), brute)
    zn, cn = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(codebook, dim=1)
    assert torch.equal(nearest_code(zn, cn, cosine=True, chunk=100), torch.cdist(zn, cn).argmin(1))


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
