"""Trainer behaviour: overfitting, the delayed discriminator, EMA, exact resume."""

import csv
import io
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vtok import Tokenizer
from vtok.data import SyntheticCaptions
from vtok.experiment import run as train
from vtok.losses import TokenizerLoss
from vtok.training import TokenizerModule

from .conftest import tiny_tokenizer_config


def _trainer(max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _loader(n=4, batch=4) -> DataLoader:
    return DataLoader(SyntheticCaptions(length=n, size=32), batch_size=batch)


def test_tiny_model_overfits_a_few_images():
    module = TokenizerModule(Tokenizer(**tiny_tokenizer_config(codebook_size=256)),
                             TokenizerLoss(l1_weight=0.0, l2_weight=1.0), lr=3e-3, warmup_steps=10,
                             total_steps=300, ema_decay=None)
    images = next(iter(_loader()))["image"]
    before = torch.nn.functional.mse_loss(module.tokenizer.eval()(images).reconstruction, images).item()
    _trainer(300).fit(module, _loader())
    after = torch.nn.functional.mse_loss(module.tokenizer.eval()(images).reconstruction, images).item()
    assert after < before / 10, (before, after)


def test_discriminator_starts_at_its_step():
    loss = TokenizerLoss(disc_weight=0.5, disc_start=3, adaptive=True,
                         discriminator={"channels": 8, "num_layers": 2})
    module = TokenizerModule(Tokenizer(**tiny_tokenizer_config()), loss, lr=1e-3, warmup_steps=1,
                             total_steps=10, ema_decay=None)
    initial = [p.detach().clone() for p in loss.discriminator.parameters()]
    factors = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            factors.append(float(trainer.callback_metrics["train/gan/factor"]))
            same = all(torch.equal(a, b) for a, b in zip(initial, loss.discriminator.parameters()))
            if trainer.global_step <= 3:
                assert same, f"discriminator changed at step {trainer.global_step}"
            else:
                assert not same, "discriminator did not learn after its start"
            if trainer.global_step > 3:
                assert "train/gan/adaptive_weight" in trainer.callback_metrics

    _trainer(6, callbacks=[Watch()], log_every_n_steps=1).fit(module, _loader(8, 2))
    assert factors == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_metrics_reach_lightning_only_on_the_steps_its_loggers_write():
    module = TokenizerModule(Tokenizer(**tiny_tokenizer_config()), TokenizerLoss(), lr=1e-3, warmup_steps=1,
                             total_steps=7, ema_decay=None)
    logged_at = []
    log_dict = module.log_dict
    module.log_dict = lambda logs, **kwargs: (logged_at.append(module.trainer.global_step), log_dict(logs, **kwargs))
    _trainer(7, log_every_n_steps=3).fit(module, _loader(8, 1))
    assert logged_at == [3, 6, 7]  # the loggers' steps and the last
    assert module.step_log.usage.counts().sum() == 7 * module.tokenizer.num_tokens(32)  # usage still counts every step


def test_gan_weight_ramps():
    loss = TokenizerLoss(disc_weight=1.0, disc_start=10, disc_ramp_steps=4)
    assert [loss.gan_factor(s) for s in (9, 10, 11, 13, 20)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert TokenizerLoss(disc_weight=0.0).gan_factor(100) == 0.0


def test_ema_follows_weights():
    module = TokenizerModule(Tokenizer(**tiny_tokenizer_config()), TokenizerLoss(), lr=1e-2, warmup_steps=1,
                             total_steps=5, ema_decay=0.5)
    _trainer(5).fit(module, _loader())
    live = dict(module.tokenizer.named_parameters())
    ema = dict(module.ema.model.named_parameters())
    name = "encoder.layers.1.weight"
    assert not torch.equal(live[name], ema[name])
    assert module.ema.updates == 5


def test_ema_update_is_the_per_tensor_average_bit_for_bit():
    from vtok.training.ema import EMA

    model = Tokenizer(**tiny_tokenizer_config())
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in ema.model.named_parameters()}
    ema.update(model)
    decay = min(0.9, 2 / 11)  # the warm-up decay of the first update
    for name, live in model.named_parameters():
        expected = before[name].lerp(live.detach(), 1.0 - decay)
        assert torch.equal(dict(ema.model.named_parameters())[name], expected), name


def test_time_budget_anneals_and_stops_on_the_clock(monkeypatch):
    """With ``time_budget`` the cosine follows the spent fraction of the budget when it is ahead of the steps,
    and training stops when the budget is spent (a clock that advances 1 s per step stands in for time)."""
    import types

    import vtok.training.clock as module_file
    from vtok.training.schedule import warmup_cosine

    clock = iter(range(1000))
    monkeypatch.setattr(module_file, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    module = TokenizerModule(Tokenizer(**tiny_tokenizer_config()), TokenizerLoss(), lr=1e-2, warmup_steps=1,
                             total_steps=1000, min_lr_ratio=0.1, time_budget=4.0, ema_decay=None)
    lrs = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(100, callbacks=[Watch()]).fit(module, _loader(40, 2))
    assert module.global_step == 4 and module.train_seconds == 4.0
    # step k's scheduler update sees the k - 1 seconds spent before it: far ahead of k / 1000 steps
    expected = [1e-2 * warmup_cosine(k, 1, 1000, 0.1, (k - 1) / 4) for k in range(1, 5)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] < 0.25 * 1e-2  # by steps alone it would still be at 1e-2


def _losses(run_dir: Path) -> dict[int, float]:
    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): float(r["train/total"]) for r in rows if r.get("train/total")}


def _shards_with_unreadable_samples(out: Path) -> list[str]:
    """Two training shards where every fifth sample is unreadable, and one validation shard."""
    from vtok.data.shards import write_shards

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(30)]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    items = [(f"s{i:03d}", b"" if i % 5 == 2 else encoded[i], "png", "") for i in range(24)]
    write_shards(items, out / "train", maxcount=12, verify=False, progress=False)
    write_shards([(f"v{i}", encoded[24 + i], "png", "") for i in range(6)], out / "val", progress=False)
    return ["data=webdataset", f"data.train.urls='{out}/train/shard-{{000000..000001}}.tar'",
            f"data.val.urls={out}/val/shard-000000.tar", "data.image_size=32", "data.batch_size=4",
            "data.num_workers=2", "data.train.shuffle_buffer=4"]


def _parquet_with_unreadable_rows(out: Path) -> list[str]:
    """``data=hf`` over a local parquet folder (as ``datasets`` writes one): 24 training rows, every fifth a
    zero-byte image, in two files, and 6 validation rows."""
    from .helpers import write_parquet_split

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(30):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    write_parquet_split(out / "hf", "train", [b"" if i % 5 == 2 else encoded[i] for i in range(24)], files=2)
    write_parquet_split(out / "hf", "validation", encoded[24:])
    return ["data=hf", f"data.hf.path={out / 'hf'}", f"data.hf.cache_dir={out / 'hf_cache'}", "data.image_size=32",
            "data.batch_size=4", "data.num_workers=2"]


@pytest.mark.parametrize("data", ["synthetic", "shards with unreadable samples, 2 workers",
                                  "hf parquet with unreadable rows, 2 workers"])
def test_resume_gives_the_same_next_steps(tmp_path, compose_run, data):
    # resumed at step 3: odd, so with 2 workers the next batch is the second worker's (mid-epoch for data=hf)
    data_overrides = {"synthetic": lambda: ["data=synthetic"],
                      "shards with unreadable samples, 2 workers": lambda: _shards_with_unreadable_samples(tmp_path),
                      "hf parquet with unreadable rows, 2 workers": lambda: _parquet_with_unreadable_rows(tmp_path),
                      }[data]()
    common = [
        *data_overrides, "trainer=cpu", "trainer.max_steps=6", "trainer.val_check_interval=100",
        "callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.reconstruction_grid.every_n_steps=100",
        "loss=vqgan", "loss.perceptual_weight=0", "loss.disc_start=2", "loss.discriminator.channels=8",
        "model.encoder.out_dim=16", "quantizer.codebook_size=64", "quantizer.restart_threshold=0.5",
        "module.warmup_steps=2", "module.ema_decay=0.9",
    ]
    full = train(compose_run(*common, "run_name=full"))
    assert full["train_steps"] == 6
    checkpoint = tmp_path / "outputs/full/checkpoints/step0000003.ckpt"
    resumed_dir = tmp_path / "outputs/resumed/checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copy(checkpoint, resumed_dir / "last.ckpt")
    resumed = train(compose_run(*common, "run_name=resumed", "resume=auto"))
    assert resumed["train_steps"] == 6

    a, b = _losses(tmp_path / "outputs/full"), _losses(tmp_path / "outputs/resumed")
    assert sorted(b) == [3, 4, 5]
    for step in (3, 4, 5):
        assert a[step] == b[step], (step, a[step], b[step])
    final_a = torch.load(tmp_path / "outputs/full/checkpoints/step0000006.ckpt", weights_only=False)
    final_b = torch.load(tmp_path / "outputs/resumed/checkpoints/step0000006.ckpt", weights_only=False)
    for key, value in final_a["state_dict"].items():
        assert torch.equal(value, final_b["state_dict"][key]), key
    for key, value in final_a["ema"]["weights"].items():
        assert torch.equal(value, final_b["ema"]["weights"][key]), key


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, compose_run):
    checkpoints = tmp_path / "outputs/x/checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"")
    cfg = compose_run("run_name=x")
    with pytest.raises(FileExistsError, match=r"resume=auto.*overwrite=true"):
        train(cfg)
