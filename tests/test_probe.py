"""The autoregressive probe's parts: tokens as sequences, the causal prior, and range coding with its probabilities."""

from __future__ import annotations

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
