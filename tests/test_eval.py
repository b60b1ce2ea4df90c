import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vtok import Tokenizer
from vtok.data import SyntheticCaptions
from vtok.eval import evaluate_to_dir, jpeg_at_bpp, patch_mean_at_bpp, psnr, ssim
from vtok.eval.baselines import jpeg_roundtrip, patch_mean_roundtrip, patch_mean_settings

from .conftest import tiny_tokenizer_config


def test_psnr_of_known_noise_level():
    torch.manual_seed(0)
    clean = torch.randint(20, 236, (1, 3, 64, 64)).float()
    noise = torch.randint(0, 2, clean.shape).float() * 20 - 10  # +-10 grey levels exactly: MSE = 100
    images, noisy = clean / 127.5 - 1, (clean + noise) / 127.5 - 1
    assert torch.isclose(psnr(noisy, images), torch.tensor(10 * np.log10(255**2 / 100), dtype=torch.float32), atol=1e-3)


def test_ssim_identical_is_one_and_noise_lowers_it():
    images = torch.rand(2, 3, 48, 48) * 2 - 1
    assert torch.allclose(ssim(images, images), torch.ones(2))
    noise = torch.randn_like(images)
    slightly, badly = ssim(images + 0.05 * noise, images), ssim(images + 0.5 * noise, images)
    assert (badly < slightly).all() and (slightly < 1).all()


def test_patch_mean_baseline():
    assert sorted(patch_mean_settings(12 / 64)) == [(4, 1), (8, 4)]  # same rate, both tried
    assert (4, 4) in patch_mean_settings(0.7) and (8, 4) not in patch_mean_settings(0.7)
    flat = torch.full((3, 32, 32), 0.2)
    # 8-bit flat colour, 4 bits per channel: error is the 4-bit rounding only
    rec = patch_mean_roundtrip(flat, 8, 4)
    assert rec.shape == flat.shape and (rec - flat).abs().max() < 1 / 15 + 1e-6
    result = patch_mean_at_bpp([flat], 0.1875)
    assert result.bits_per_pixel == 12 / 64 and result.setting.startswith("8x8") and result.psnr > 30


def test_jpeg_baseline_hits_nearest_rate():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 64, 64))).float() * 2 - 1
    low, high = jpeg_at_bpp([image], 0.5), jpeg_at_bpp([image], 4.0)
    assert high.psnr > low.psnr and high.bits_per_pixel > low.bits_per_pixel
    # every quality's rate, by brute force: the chosen one is the nearest to each target, with its own PSNR
    rates = {q: jpeg_roundtrip(image, q)[1] for q in range(1, 96)}
    for result, target in ((low, 0.5), (high, 4.0)):
        quality = min(rates, key=lambda q: (abs(rates[q] - target), q))
        assert result.setting == f"quality per image [{quality}]"
        assert result.bits_per_pixel == rates[quality]
        decoded, _ = jpeg_roundtrip(image, quality)
        assert result.psnr == pytest.approx(float(psnr(decoded[None], image[None])), abs=1e-9)


def test_report_has_every_key(tmp_path):
    tokenizer = Tokenizer(**tiny_tokenizer_config()).eval()
    loader = torch.utils.data.DataLoader(SyntheticCaptions(length=3, size=32), batch_size=1)
    report = evaluate_to_dir(tokenizer, loader, tmp_path, extra={"train_steps": 0, "train_seconds": 0.0})
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "num_images", "train_steps", "train_seconds",
                "bits_per_pixel", "jpeg", "patch_mean", "psnr_margin_over_patch_mean"):
        assert key in saved, key
    assert saved["num_images"] == 3 and saved["bits_per_pixel"] == pytest.approx(6 / 16)
    assert (tmp_path / "reconstructions.png").stat().st_size > 0
    assert report["report_path"] == str(tmp_path / "report.json")


def test_a_fixed_size_tokenizer_refuses_data_it_cannot_decode_with_the_overrides_to_add(tmp_path):
    from omegaconf import OmegaConf

    from vtok.eval.__main__ import check_data_fits, default_out_dir

    check_data_fits(None, OmegaConf.create({"val_crop": "full", "image_size": 256}))  # grids take any size
    check_data_fits(64, OmegaConf.create({"val_crop": "center", "image_size": 64}))
    with pytest.raises(ValueError, match=r"add data\.val_crop=center data\.image_size=64"):
        check_data_fits(64, OmegaConf.create({"val_crop": "full", "image_size": 256}))
    assert default_out_dir(tmp_path / "run/checkpoints/last.ckpt", tmp_path / "outputs") == tmp_path / "run/eval"
    assert default_out_dir(Path("org/model"), tmp_path / "outputs") == tmp_path / "outputs/eval/org--model"


def test_a_new_loss_term_reports_through_its_own_evaluation_alone(tmp_path):
    """The evaluation loop and the end-of-run summary know no term by name or class: a term defined here, with its
    own evaluation, reaches the report and the summary untouched."""
    from vtok.experiment import summary
    from vtok.losses import LossTerm, TermEvaluation

    class MeanLatent(TermEvaluation):
        protocol = "mean of the quantized features"

        def __init__(self) -> None:
            self.values: list[float] = []

        def update(self, inputs) -> None:
            self.values += inputs.output.features["quantized"].flatten(1).mean(1).tolist()

        def gather(self) -> None:
            pass

        def report(self) -> dict:
            mean = sum(self.values) / len(self.values)
            return {"mean": mean, "num_images": len(self.values), "summary": [f"mean latent {mean:.4f}", "detail"]}

    class Probe(LossTerm):
        features = ("quantized",)

        def evaluation(self) -> TermEvaluation:
            return MeanLatent()

    class Silent(LossTerm):  # no evaluation: nothing in the report
        features = ("encoder",)

    tokenizer = Tokenizer(**tiny_tokenizer_config()).eval()
    loader = torch.utils.data.DataLoader(SyntheticCaptions(length=5, size=32), batch_size=2)
    report = evaluate_to_dir(tokenizer, loader, tmp_path, baselines=False, terms={"probe": Probe(), "quiet": Silent()})
    with torch.no_grad():
        expected = torch.cat([tokenizer(b["image"], features=("quantized",)).features["quantized"].flatten(1).mean(1)
                              for b in loader])
    assert report["semantic"].keys() == {"probe"}
    assert report["semantic"]["probe"]["num_images"] == 5
    assert report["semantic"]["probe"]["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert report["semantic_protocol"] == {"probe": "mean of the quantized features"}
    text = summary({"train_steps": 1, "train_seconds": 1.0, "checkpoint": "x.ckpt", "report": report})
    assert f"  probe: mean latent {report['semantic']['probe']['mean']:.4f}\n    detail" in text


def test_sharpness_is_one_for_the_original_below_for_a_blur_above_for_noise():
    from vtok.eval.metrics import sharpness

    torch.manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(2, 3, 16, 16) * 2 - 1, size=64, mode="bicubic").clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(image, 5, stride=1, padding=2, count_include_pad=False)
    noisy = (image + 0.2 * torch.randn_like(image)).clamp(-1, 1)
    assert torch.allclose(sharpness(image, image), torch.ones(2))
    assert (sharpness(blurred, image) < 0.5).all()
    assert (sharpness(noisy, image) > 1.5).all()


def test_codecs_at_a_psnr_take_the_lowest_quality_reaching_it():
    from vtok.eval.baselines import codec_at_psnr, codec_roundtrip

    torch.manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8) * 2 - 1, size=64, mode="bicubic")[0].clamp(-1, 1)
    for codec in ("jpeg", "webp"):
        result = codec_at_psnr([image], [30.0], codec)
        quality = int(result.setting.split("[")[1].rstrip("]"))
        assert result.psnr >= 30.0
        below, _ = codec_roundtrip(image, quality - 1, codec)
        assert float(psnr(below[None], image[None])) < 30.0  # one quality lower misses it
        assert codec_at_psnr([image], [40.0], codec).bits_per_pixel > result.bits_per_pixel


def test_images_of_different_token_counts_report_the_spread(tmp_path, monkeypatch):
    from vtok.eval import evaluate

    tokenizer = Tokenizer(**tiny_tokenizer_config()).eval()
    loader = torch.utils.data.DataLoader(SyntheticCaptions(length=4, size=32), batch_size=2)
    fixed = evaluate(tokenizer, loader, baselines=False)[0]
    assert fixed["tokens_per_image"] == 64 and fixed["tokens_per_image_spread"] == {"std": 0.0, "min": 64, "max": 64}
    encode = tokenizer.encode
    counts = iter([torch.tensor([10, 30]), torch.tensor([20, 40])])

    def dynamic(images, **kwargs):  # as a dynamic-length tokenizer (LaVIT) would set lengths
        tokens = encode(images, **kwargs)
        tokens.lengths = next(counts)
        return tokens

    monkeypatch.setattr(tokenizer, "encode", dynamic)
    monkeypatch.setattr(tokenizer, "decode", lambda tokens, **kwargs: torch.zeros(len(tokens.latents), 3, 32, 32))
    report = evaluate(tokenizer, loader, baselines=False)[0]
    assert report["tokens_per_image"] == 25 and report["bits_per_pixel"] == pytest.approx(25 * 6 / 1024)
    assert report["tokens_per_image_spread"] == {"std": pytest.approx(np.std([10, 30, 20, 40])), "min": 10, "max": 40}
