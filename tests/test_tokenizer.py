import pytest
import torch

from vtok import Tokenizer
from vtok.quantizers import VectorQuantizer

from .conftest import tiny_tokenizer_config


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (16, 80)])
def test_encode_decode_shapes(tiny_config, size):
    tokenizer = Tokenizer(**tiny_config).eval()
    images = torch.rand(2, 3, *size) * 2 - 1
    tokens = tokenizer.encode(images)
    grid = (size[0] // 4, size[1] // 4)
    assert tokens.layout == grid
    assert tokens.indices.shape == (2, *grid) and tokens.indices.dtype == torch.long
    assert tokens.latents.shape == (2, *grid, 16)
    assert tokenizer.decode(tokens).shape == images.shape
    assert tokenizer.num_tokens(size) == grid[0] * grid[1]
    assert tokenizer.vocab_size == 64 and tokenizer.bits_per_token == 6.0


def test_decode_indices_equals_decode_and_embed_matches_latents(tiny_config):
    tokenizer = Tokenizer(**tiny_config).eval()
    tokens = tokenizer.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert torch.equal(tokenizer.embed(tokens.indices), tokens.latents)
    assert torch.equal(tokenizer.decode_indices(tokens.indices), tokenizer.decode(tokens))


def test_gradients_reach_encoder_through_quantizer(tiny_config):
    tokenizer = Tokenizer(**tiny_config)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tokenizer(images)
    (out.reconstruction - images).abs().mean().backward()
    first_conv = tokenizer.encoder.layers[1]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    # the codebook learns from its own loss, not from the reconstruction (straight-through)
    assert tokenizer.quantizer.codebook.grad is None


def test_config_rebuilds_same_architecture(tiny_config):
    tokenizer = Tokenizer(**tiny_config)
    clone = Tokenizer(**tokenizer.config)
    clone.load_state_dict(tokenizer.state_dict())
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(clone.eval().encode(images).indices, tokenizer.eval().encode(images).indices)


def test_unknown_kind_is_refused(tiny_config):
    tiny_config["encoder"]["kind"] = "os.system"
    with pytest.raises(ValueError, match=r"unknown encoder kind 'os\.system'; choose one of"):
        Tokenizer(**tiny_config)
    config = tiny_tokenizer_config()
    config["quantizer"]["kind"] = "nope"
    with pytest.raises(ValueError, match="unknown quantizer kind"):
        Tokenizer(**config)


def test_patch_size_changes_downsampling():
    config = tiny_tokenizer_config()
    config["encoder"]["patch_size"] = config["decoder"]["patch_size"] = 2
    tokenizer = Tokenizer(**config)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    out = tokenizer(images)
    assert out.tokens.layout == (4, 4) and out.reconstruction.shape == images.shape


def test_vq_restart_lifts_usage_on_collapsing_toy():
    """Codes far from the data never win; restarts move them onto encoder outputs."""

    def usage_after_training(restart: float) -> float:
        torch.manual_seed(0)
        vq = VectorQuantizer(dim=8, codebook_size=64, l2_normalize=False, restart_threshold=restart,
                             restart_decay=0.9, data_init=False)
        with torch.no_grad():
            vq.codebook.add_(10.0)  # the whole codebook sits far from the data: one code takes everything
        optimizer = torch.optim.Adam(vq.parameters(), lr=1e-2)
        for _ in range(100):
            out = vq(torch.randn(512, 8))
            optimizer.zero_grad()
            sum(out.losses.values()).backward()
            optimizer.step()
        vq.eval()
        indices = vq(torch.randn(4096, 8)).indices
        return torch.unique(indices).numel() / 64

    collapsed, restarted = usage_after_training(0.0), usage_after_training(0.1)
    assert collapsed < 0.2
    assert restarted > 0.9


def test_vq_losses_and_straight_through():
    vq = VectorQuantizer(dim=6, codebook_size=32, codebook_dim=3, commitment_weight=0.25)
    z = torch.randn(4, 5, 6, requires_grad=True)
    out = vq(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (4, 5)
    assert set(out.losses) == {"codebook", "commitment"}
    # commitment is 0.25 x the codebook term in value (same distance, different weight)
    assert torch.allclose(out.losses["commitment"], 0.25 * out.losses["codebook"])
    out.quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert torch.equal(vq.indices_to_codes(out.indices), out.quantized)


def test_vq_data_init_places_codes_on_the_data():
    torch.manual_seed(0)
    data = torch.randn(2048, 8) + 5.0
    for kmeans_iters in (0, 5):
        vq = VectorQuantizer(dim=8, codebook_size=32, l2_normalize=False, kmeans_iters=kmeans_iters)
        assert (vq.codebook.mean(0) - 5.0).abs().max() > 4  # random codes start far away
        vq(data)
        assert bool(vq.initialized)
        assert (vq.codebook.mean(0) - 5.0).abs().max() < 0.5
        vq.eval()
        assert torch.unique(vq(data).indices).numel() >= 28


def test_every_family_implements_the_declared_parts():
    from vtok.tokenizers import DECODERS, ENCODERS
    from vtok.tokenizers.parts import Decoder, Encoder

    assert all(issubclass(cls, Encoder) for cls in ENCODERS.values())
    assert all(issubclass(cls, Decoder) for cls in DECODERS.values())


def test_named_features_have_channels_last_grids_and_unknown_names_fail(tiny_config):
    tokenizer = Tokenizer(**tiny_config)
    assert tokenizer.feature_names == ("encoder", "quantized", "encoder.level0", "encoder.level1",
                                       "encoder.level2", "encoder.mid")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tokenizer(images, features=["encoder.level0", "encoder.mid", "encoder", "quantized"])
    assert out.features["encoder.level0"].shape == (2, 32, 32, 16)  # level 0: full resolution, 16 channels
    assert out.features["encoder.mid"].shape == (2, 8, 8, 32)
    assert out.features["encoder"].shape == out.features["quantized"].shape == (2, 8, 8, 16)
    assert torch.equal(out.features["quantized"], out.tokens.latents)
    # asking for features changes nothing else
    torch.manual_seed(1)
    plain = tokenizer(images)
    assert torch.equal(plain.reconstruction, out.reconstruction) and plain.features == {}
    with pytest.raises(KeyError, match=r"unknown tokenizer features \['encoder.level9'\]"):
        tokenizer(images, features=["encoder.level9"])


def test_quantizer_sizes_have_one_meaning():
    from vtok.quantizers import build_quantizer

    gaussian = build_quantizer({"kind": "gaussian", "dim": 16})
    assert (gaussian.in_dim, gaussian.out_dim) == (16, 8)
    assert gaussian(torch.randn(4, 16)).quantized.shape == (4, 8)
    for kind in ({"kind": "vq", "codebook_size": 8}, {"kind": "fsq", "levels": [3, 3]}, {"kind": "lfq", "bits": 4}):
        quantizer = build_quantizer({**kind, "dim": 16})
        assert quantizer.in_dim == quantizer.out_dim == 16


@pytest.mark.parametrize("kind", [{"kind": "vq", "codebook_size": 8}, {"kind": "fsq", "levels": [3, 3]},
                                  {"kind": "lfq", "bits": 4}, {"kind": "bernoulli", "bits": 4},
                                  {"kind": "gaussian"}])
def test_quantizers_compute_in_fp32_and_answer_in_the_input_dtype(kind):
    from vtok.quantizers import build_quantizer

    quantizer = build_quantizer({**kind, "dim": 16})
    seen = []
    quantizer.project_in.register_forward_hook(lambda module, args, out: seen.append(args[0].dtype))
    z = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z)
    assert seen == [torch.float32] and out.quantized.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in out.losses.values())


def test_usage_window_counts_exactly_the_last_batches():
    from vtok.quantizers.stats import UsageWindow

    window = UsageWindow(codebook_size=10, window=3)
    batches = [torch.bincount(torch.randint(0, 10, (7,)), minlength=10).float() for _ in range(6)]
    for i, counts in enumerate(batches):
        window.update(counts)
        assert torch.equal(window.counts(), torch.stack(batches[max(0, i - 2): i + 1]).sum(0))


def test_bicubic_upsample_is_interpolate_as_two_matrix_products():
    import torch.nn.functional as F

    from vtok.tokenizers.conv import bicubic_upsample

    for shape, factor in (((2, 3, 8, 8), 8), ((1, 2, 5, 7), 4)):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        ours = bicubic_upsample(x, factor)
        reference = F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)
        assert ours.shape == reference.shape
        assert torch.allclose(ours, reference, atol=1e-6)
        weights = torch.randn_like(ours)
        (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
        (g_ref,) = torch.autograd.grad((reference * weights).sum(), x)
        assert torch.allclose(g_ours, g_ref, atol=1e-6)
