"""rFID maths, reference caching, LPIPS in reports, the pretrained-weights command, and DDP accumulation."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import linalg
from torch import nn

from vtok import Tokenizer
from vtok.eval.evaluate import evaluate
from vtok.eval.fid import FIDMeter
from vtok.weights import FILES, MissingWeightsError, files_needed
from vtok.weights import main as weights_main

from .conftest import tiny_tokenizer_config


class PooledFeatures(nn.Module):
    """A fixed feature extractor: 4x4 average pool, then a fixed random projection to 12 features."""

    num_features = 12

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(48, 12)
        with torch.no_grad():
            self.project.weight.copy_(torch.randn(12, 48, generator=torch.Generator().manual_seed(0)))
            self.project.bias.zero_()

    def forward(self, images):
        return self.project(nn.functional.adaptive_avg_pool2d(images, 4).flatten(1))


def _frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 1.6 - 0.8 + shift).clamp(-1, 1)


def test_fid_of_identical_sets_is_zero_and_of_shifted_sets_matches_scipy(tmp_path):
    real = _images(200, 0)
    same = FIDMeter(feature=PooledFeatures())
    same.update(real, real)
    assert abs(same.compute()) < 1e-3
    shifted = _images(200, 1, shift=0.3)
    meter = FIDMeter(feature=PooledFeatures())
    for i in range(0, 200, 50):  # batches accumulate
        meter.update(real[i : i + 50], shifted[i : i + 50])
    extractor = PooledFeatures()
    with torch.no_grad():
        a = extractor((real + 1) / 2).double().numpy()
        b = extractor((shifted + 1) / 2).double().numpy()
    expected = _frechet_scipy(a, b)
    assert expected > 1.0
    assert meter.compute() == pytest.approx(expected, rel=1e-3)


def test_generated_sets_of_another_size_are_compared_by_their_statistics():
    real = _images(200, 0)
    twice = FIDMeter(feature=PooledFeatures())  # generation FID: 400 samples against 200 references
    twice.update_reference(real)
    twice.update_generated(torch.cat([real, real]))
    assert abs(twice.compute()) < 0.05  # the same distribution (the covariance's n-1 differs slightly)
    other = FIDMeter(feature=PooledFeatures())
    other.update_reference(real)
    shifted = _images(60, 1, shift=0.3)
    other.update_generated(shifted)
    extractor = PooledFeatures()
    with torch.no_grad():
        a, b = extractor((real + 1) / 2).double().numpy(), extractor((shifted + 1) / 2).double().numpy()
    assert other.compute() == pytest.approx(_frechet_scipy(a, b), rel=1e-3)


def test_reference_statistics_are_cached_and_reused(tmp_path):
    real, fake = _images(64, 0), _images(64, 1, shift=0.2)
    first = FIDMeter(feature=PooledFeatures(), cache_dir=tmp_path, reference={"set": "a"})
    first.update(real, fake)
    value = first.compute()
    assert first.cache_file.is_file() and not first.reference_cached
    second = FIDMeter(feature=PooledFeatures(), cache_dir=tmp_path, reference={"set": "a"})
    assert second.reference_cached
    second.update(torch.zeros_like(real), fake)  # originals are not looked at again
    assert second.compute() == pytest.approx(value, rel=1e-6)
    other = FIDMeter(feature=PooledFeatures(), cache_dir=tmp_path, reference={"set": "b"})
    assert not other.reference_cached and other.cache_file != first.cache_file


def test_missing_inception_weights_name_the_file_and_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"eval\.inception_path=/path/to/pt_inception-2015-12-05-6726825d"):
        FIDMeter(inception_path=str(tmp_path / "nope.pth"))


def test_report_holds_fid_lpips_entropy_and_throughput():
    from vtok.losses import LPIPS

    tokenizer = Tokenizer(**tiny_tokenizer_config()).eval()
    batches = [{"image": _images(4, s).repeat_interleave(2, -1).repeat_interleave(2, -2)} for s in range(2)]
    lpips = LPIPS("alex", random_backbone=True)  # random weights: the same network checks the value below
    report, *_ = evaluate(tokenizer, batches, baselines=False, fid=FIDMeter(feature=PooledFeatures()), lpips=lpips)
    # every figure recomputed here from the same images, tokens and networks
    originals = torch.cat([b["image"] for b in batches])
    with torch.no_grad():
        reconstructions = tokenizer.decode(tokenizer.encode(originals)).clamp(-1, 1)
        indices = tokenizer.encode(originals).indices.flatten()
    counts = torch.bincount(indices, minlength=64).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log2()).sum())
    assert report["num_images"] == 8 and report["tokens_per_image"] == 64 and report["bits_per_image"] == 64 * 6
    assert report["codebook_usage"] == pytest.approx(float((counts > 0).double().mean()))
    assert report["entropy_bits"] == pytest.approx(entropy) and report["perplexity"] == pytest.approx(2**entropy)
    fid = FIDMeter(feature=PooledFeatures())
    fid.update(originals, reconstructions)
    assert report["rfid"] == pytest.approx(fid.compute(), rel=1e-4) and report["rfid"] > 0
    assert report["lpips"] == pytest.approx(float(lpips(reconstructions, originals).mean()), rel=1e-4)
    assert report["encode_images_per_second"] > 0 and report["decode_images_per_second"] > 0


def test_weights_command_lists_what_a_config_needs(tmp_path, capsys, monkeypatch):
    from .conftest import ROOT, compose_config

    assert files_needed(compose_config("experiment=quickstart", toy=False)) == []
    assert files_needed(compose_config("experiment=llamagen_vq16")) == []  # toy scale: nothing to download
    needed = files_needed(compose_config("experiment=llamagen_vq16", toy=False))
    from vtok.weights import models_needed

    assert models_needed(compose_config("experiment=unitok", toy=False)) == [
        ("sentence-transformers/all-MiniLM-L6-v2", "teachers.text.source")]
    assert models_needed(compose_config("experiment=tokenflow", toy=False)) == [
        ("google/siglip-so400m-patch14-384", "teachers.image.source")]
    assert models_needed(compose_config("experiment=tokenflow")) == []  # toy: built from configs
    assert needed == [("lpips_vgg", "loss.perceptual.backbone_path"), ("fid_inception", "eval.inception_path"),
                      ("lpips_alex", "eval.lpips_backbone_path")]
    monkeypatch.chdir(ROOT)
    assert weights_main([f"out={tmp_path}", "experiment=quickstart"]) == 0
    assert "needs no pretrained files" in capsys.readouterr().out

    def fake_download(url, path, progress=True):  # stands in for the network: a file with the wrong hash
        Path(path).write_bytes(b"not the weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert weights_main([f"out={tmp_path}", "experiment=vqgan_f16"]) == 1
    err = capsys.readouterr().err
    assert FILES["lpips_vgg"].filename in err and "does not start with 397923af" in err


def _eval_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    tokenizer = Tokenizer(**tiny_tokenizer_config()).eval()
    images = _images(8, 0).repeat_interleave(2, -1).repeat_interleave(2, -2)
    share = [{"image": images[i : i + 2]} for i in range(rank * 4, rank * 4 + 4, 2)]
    report, *_ = evaluate(tokenizer, share, baselines=False, fid=FIDMeter(feature=PooledFeatures()))
    torch.save(report, f"{out}/rank{rank}.pt")
    dist.barrier()  # no rank tears down gloo while another still talks to it
    dist.destroy_process_group()
    # The results are on disk. Skip interpreter teardown: under CPU load torch's gloo threads occasionally
    # abort there ("terminate called without an active exception"), after all work is done.
    os._exit(0)


def test_metrics_accumulate_across_ddp_ranks(tmp_path):
    mp.spawn(_eval_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    torch.manual_seed(0)
    tokenizer = Tokenizer(**tiny_tokenizer_config()).eval()
    images = _images(8, 0).repeat_interleave(2, -1).repeat_interleave(2, -2)
    single, *_ = evaluate(tokenizer, [{"image": images[i : i + 2]} for i in range(0, 8, 2)], baselines=False,
                            fid=FIDMeter(feature=PooledFeatures()))
    for report in (r0, r1):
        assert report["num_images"] == 8
        assert report["psnr_per_image"] == pytest.approx(single["psnr_per_image"], abs=1e-5)
        for key in ("psnr", "ssim", "codebook_usage", "perplexity", "rfid"):
            assert report[key] == pytest.approx(single[key], rel=1e-4), key
