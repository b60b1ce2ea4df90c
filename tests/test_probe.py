"""The autoregressive probe's parts: tokens as sequences, the causal prior, and range coding with its probabilities."""

from __future__ import annotations

import json
import os

import pytest
import torch

from vtok.probe import TokenPrior, decode_sequence, encode_sequence, ideal_bits, token_sequences
from vtok.tokenizers import Tokens


def test_grids_are_read_in_raster_order_and_prefixes_keep_their_length():
    grid = torch.arange(12).view(2, 2, 3)
    assert [s.tolist() for s in token_sequences(Tokens(grid, torch.zeros(2, 2, 3, 1), (2, 3)))] == [
        [0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    sequence = Tokens(torch.arange(8).view(2, 4), torch.zeros(2, 4, 1), (4,), lengths=torch.tensor([1, 3]))
    assert [s.tolist() for s in token_sequences(sequence)] == [[0], [4, 5, 6]]
    residual = Tokens(torch.arange(8).view(1, 2, 2, 2), torch.zeros(1, 2, 2, 1), (2, 2))  # (B, h, w, depth)
    assert token_sequences(residual)[0].tolist() == list(range(8))  # position by position, depth within
    with pytest.raises(ValueError, match="continuous"):
        token_sequences(Tokens(None, torch.zeros(1, 2, 2), (2,)))


def test_range_coding_round_trips_and_spends_what_the_probabilities_say():
    torch.manual_seed(0)
    for vocab, length in ((16, 1), (512, 300), (4096, 2000)):
        probabilities = torch.distributions.Dirichlet(torch.full((vocab,), 0.3)).sample((length,)).double()
        ids = torch.distributions.Categorical(probabilities).sample()
        data = encode_sequence(probabilities, ids)
        rows = iter(probabilities)
        assert torch.equal(decode_sequence(data, length, lambda prefix, rows=rows: next(rows)), ids)
        ideal = ideal_bits(probabilities, ids)
        # the coder's overhead: under 1% plus its final 64 bits (two 32-bit words)
        assert 8 * len(data) <= 1.01 * ideal + 64, (vocab, length, 8 * len(data), ideal)


def _train(prior: TokenPrior, sequences: torch.Tensor, steps: int = 150) -> None:
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = sequences[torch.randint(len(sequences), (16,))]
        loss = prior.bits(batch).mean() / batch.shape[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_the_prior_learns_a_deterministic_source_and_not_a_random_one():
    torch.manual_seed(0)
    vocab, length = 64, 32
    periodic = (torch.arange(length) * 7 % vocab).repeat(64, 1)
    random = torch.randint(vocab, (2048, length))
    learned, guessing = TokenPrior(vocab, length, width=64, depth=2), TokenPrior(vocab, length, width=64, depth=2)
    _train(learned, periodic)
    _train(guessing, random)
    with torch.no_grad():
        assert learned.bits(periodic[:4]).mean() / length < 0.05  # bits per token
        fresh = torch.randint(vocab, (64, length))
        assert guessing.bits(fresh).mean() / length > 0.97 * 6  # log2(64) = 6 bits per token


def test_a_sequence_coded_with_the_prior_decodes_back_from_its_own_prefix():
    torch.manual_seed(1)
    vocab, length = 32, 24
    prior = TokenPrior(vocab, length, width=32, depth=1).eval()
    ids = torch.randint(vocab, (length,))
    data = encode_sequence(prior.probabilities(ids[None])[0], ids)

    assert torch.equal(decode_sequence(data, length, lambda prefix: prior.next_probabilities(prefix, length)), ids)
    assert abs(8 * len(data) - float(prior.bits(ids[None]))) < 0.02 * float(prior.bits(ids[None])) + 64


def _probe(tmp_path, ckpt, *overrides):
    from hydra import compose, initialize_config_dir

    from vtok.probe.__main__ import run

    from .conftest import ROOT

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="probe", overrides=[
            f"ckpt={ckpt}", "data=synthetic", f"paths.root_dir={tmp_path}", f"out={tmp_path / 'probe'}",
            "probe.train_images=64", "probe.width=32", "probe.depth=1", "probe.heads=2", "probe.batch_size=8",
            "probe.samples=2", "probe.save_every=5", *overrides])
    return run(cfg)


def test_the_probe_command_measures_codes_and_resumes_exactly(tmp_path):
    from vtok import Tokenizer

    from .conftest import tiny_tokenizer_config

    torch.manual_seed(0)
    folder = tmp_path / "tok"
    Tokenizer(**tiny_tokenizer_config()).save_pretrained(str(folder))
    report = _probe(tmp_path / "a", folder, "probe.steps=10")
    assert report["images"] == 16 and report["verified_round_trips"] == 16  # every held-out image decoded back
    assert report["coding_overhead"] < 0.01 + 64 * report["images"] / (report["bits_per_token"] * report["tokens"])
    assert report["raw_bits_per_pixel"] == pytest.approx(6 / 16)  # 64 codes, one token per 4x4 pixels
    assert (tmp_path / "a/probe/samples.png").exists()
    rd = report["rate_distortion"]
    assert rd["tokenizer"]["coded_bits_per_pixel"] == report["coded_bits_per_pixel"]
    for codec in ("jpeg", "webp"):  # each image at the lowest quality reaching the tokenizer's PSNR on it
        assert rd[codec]["bits_per_pixel"] > 0 and rd[codec]["psnr"] >= rd["tokenizer"]["psnr"] - 0.5, rd
    # stopped after 5 of 10 steps, then rerun: it resumes at step 5 and ends where the uninterrupted run did
    _probe(tmp_path / "b", folder, "probe.steps=10", "probe.max_steps_this_call=5")
    resumed = _probe(tmp_path / "b", folder, "probe.steps=10")
    assert resumed["steps_this_call"] == 5
    assert resumed["bits_per_token"] == report["bits_per_token"]


def test_the_probe_refuses_a_continuous_tokenizer(tmp_path):
    from vtok import Tokenizer

    from .conftest import tiny_tokenizer_config

    config = tiny_tokenizer_config()
    config["quantizer"] = {"kind": "continuous"}
    Tokenizer(**config).save_pretrained(str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="continuous tokenizer"):
        _probe(tmp_path, tmp_path / "tok", "probe.steps=1")


def _compose(tmp_path, ckpt, *overrides):
    from hydra import compose, initialize_config_dir

    from .conftest import ROOT

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose(config_name="probe", overrides=[
            f"ckpt={ckpt}", "data=synthetic", f"paths.root_dir={tmp_path}", f"out={tmp_path / 'probe'}",
            "probe.train_images=64", "probe.width=32", "probe.depth=1", "probe.heads=2", "probe.batch_size=8",
            "probe.samples=2", "probe.save_every=5", *overrides])


def test_generation_fid_compares_prior_samples_with_the_held_out_images(tmp_path):
    from vtok import Tokenizer
    from vtok.eval.fid import FIDMeter
    from vtok.probe.__main__ import probe_tokenizer
    from vtok.weights import MissingWeightsError

    from .conftest import tiny_tokenizer_config
    from .test_fid import PooledFeatures

    torch.manual_seed(0)
    tokenizer = Tokenizer(**tiny_tokenizer_config()).eval()
    cfg = _compose(tmp_path, "unused", "probe.steps=10", "probe.fid_samples=12", "probe.sample_batch_size=5")
    report = probe_tokenizer(tokenizer, cfg, tmp_path / "probe", torch.device("cpu"), fid=FIDMeter(
        feature=PooledFeatures()))
    assert report["sample_fid_samples"] == 12 and report["sample_fid_reference_images"] == 16
    assert report["sample_fid"] > 0  # samples of a 10-step prior are not the held-out images
    assert json.loads((tmp_path / "probe/probe_report.json").read_text())["sample_fid"] == report["sample_fid"]
    # the Inception file is looked for where the config says, and its absence names the key
    cfg = _compose(tmp_path, "unused", "probe.steps=10", "probe.fid_samples=4",
                   f"probe.inception_path={tmp_path / 'missing.pth'}")
    with pytest.raises(MissingWeightsError, match=r"probe\.inception_path"):
        probe_tokenizer(tokenizer, cfg, tmp_path / "probe", torch.device("cpu"))


@pytest.mark.slow
def test_the_probe_under_torchrun_shares_batches_and_images_across_two_ranks(tmp_path):
    import socket
    import subprocess
    import sys

    from vtok import Tokenizer

    from .conftest import ROOT, tiny_tokenizer_config

    torch.manual_seed(0)
    Tokenizer(**tiny_tokenizer_config()).save_pretrained(str(tmp_path / "tok"))
    single = _probe(tmp_path / "one", tmp_path / "tok", "probe.steps=10")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [f"ckpt={tmp_path / 'tok'}", "data=synthetic", f"paths.root_dir={tmp_path / 'two'}",
                 f"out={tmp_path / 'two/probe'}", "probe.train_images=64", "probe.width=32", "probe.depth=1",
                 "probe.heads=2", "probe.batch_size=8", "probe.samples=2", "probe.save_every=5", "probe.steps=10"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(port), "-m", "vtok.probe", *overrides], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two/probe/probe_report.json").read_text())
    assert two["ranks"] == 2
    assert two["images"] == single["images"] == 16 and two["verified_round_trips"] == 16  # each image once
    # one global batch of 8 split 4 + 4, gradients averaged: the same prior as one process, to float rounding
    assert two["bits_per_token"] == pytest.approx(single["bits_per_token"], rel=1e-4)
    assert two["coded_bytes_per_image"] == pytest.approx(single["coded_bytes_per_image"], rel=1e-2)
