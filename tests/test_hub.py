"""Export to a Hugging Face folder and safe loading with Tokenizer.from_pretrained."""

import json
import subprocess
import sys

import pytest
import torch

from vtok import Tokenizer
from vtok.hub import export, load_tokenizer, push
from vtok.hub import main as export_main
from vtok.tokenizers.serialization import UnsafeConfigError

from .conftest import ROOT, tiny_tokenizer_config

VIT = {"patch_size": 8, "width": 32, "depth": 1, "heads": 2, "image_size": 32}
FAMILIES = {
    "conv_vq": tiny_tokenizer_config(),
    "vit_kl": {"encoder": {"kind": "vit", "out_dim": 8, **VIT}, "quantizer": {"kind": "gaussian", "latent_dim": 4},
               "decoder": {"kind": "vit", **VIT}, "image_size": 32},
    "latent_fsq_flexible": {
        "encoder": {"kind": "latent_tokens", "num_tokens": 8, "out_dim": 4, **VIT},
        "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]},
        "decoder": {"kind": "latent_tokens", "num_tokens": 8, "nested_dropout": {"mode": "pow2"}, **VIT},
        "image_size": 32},
    "latent_binary": {
        "encoder": {"kind": "latent_tokens", "num_tokens": 8, "out_dim": 16, **VIT},
        "quantizer": {"kind": "bernoulli", "bits": 16},
        "decoder": {"kind": "latent_tokens", "num_tokens": 8, **VIT}, "image_size": 32},
    "lfq_with_expander": {**tiny_tokenizer_config(), "quantizer": {"kind": "lfq", "bits": 10},
                          "expander": {"kind": "transformer", "width": 16, "depth": 1, "heads": 2, "out_dim": 12}},
    "tokenflow_dual_shared": {
        "encoder": {"kind": "dual", "semantic": {"kind": "vit", "out_dim": 8, **VIT},
                    "pixel": {"kind": "conv", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                              "out_dim": 4, "downsample": 8}},
        "quantizer": {"kind": "dual", "semantic_dim": 8, "codebook_size": 32, "restart_threshold": 0.5},
        "decoder": {"kind": "conv", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "downsample": 8},
        "image_size": 32},
    "dualtoken_pair": {
        "encoder": {"kind": "vit", "out_dim": 8, "shallow_block": 0, "shallow_dim": 8, **VIT},
        "quantizer": {"kind": "dual", "semantic_dim": 8, "codebook_size": 32, "shared_index": False,
                      "decode_from": "both"},
        "decoder": {"kind": "vit", **VIT}, "image_size": 32},
    "mingtok_expander": {"encoder": {"kind": "vit", "out_dim": 8, **VIT},
                         "quantizer": {"kind": "continuous", "normalize": True},
                         "expander": {"kind": "transformer", "width": 16, "depth": 1, "heads": 2, "out_dim": 16},
                         "decoder": {"kind": "vit", **VIT}, "image_size": 32},
    "textok_conditioned": {
        "encoder": {"kind": "latent_tokens", "num_tokens": 8, "out_dim": 4, "condition_dim": 6, **VIT},
        "quantizer": {"kind": "vq", "codebook_size": 32},
        "decoder": {"kind": "latent_tokens", "num_tokens": 8, "condition_dim": 6, **VIT}, "image_size": 32},
}
TEXT = torch.randn(3, 6)


def _trained_a_little(config):
    tokenizer = Tokenizer(**config)
    # Move every weight and buffer off its initial value so the round trip proves real state is saved.
    tokenizer.train()(torch.rand(3, 3, 32, 32) * 2 - 1, text=TEXT if tokenizer.condition_dim else None)
    with torch.no_grad():
        for p in tokenizer.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return tokenizer.eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_then_from_pretrained_is_bit_identical(family, tmp_path):
    tokenizer = _trained_a_little(FAMILIES[family])
    export(tokenizer, tmp_path / "export", report={"psnr": 21.5, "protocol": {"crop": "center"}})
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = Tokenizer.from_pretrained(str(tmp_path / "export"))
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    text = TEXT if tokenizer.condition_dim else None
    with torch.no_grad():
        a, b = tokenizer.encode(images, text=text), loaded.encode(images, text=text)
        assert (a.indices is None and b.indices is None) or torch.equal(a.indices, b.indices)
        assert torch.equal(a.latents, b.latents)
        assert torch.equal(tokenizer.decode(a), loaded.decode(b))
    card = (tmp_path / "export" / "README.md").read_text()
    assert "psnr | 21.5" in card and "from_pretrained" in card


def _tamper(tmp_path, edit):
    export(_trained_a_little(FAMILIES["conv_vq"]), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(family="os.system"), "unknown tokenizer family 'os.system'"),
    (lambda c: c["tokenizer"]["encoder"].update(kind="torch.nn.Linear"), "looks like a Python import path"),
    (lambda c: c["tokenizer"]["encoder"].update(kind="resnet"), "unknown encoder kind 'resnet'"),
    (lambda c: c["tokenizer"]["decoder"].update(_target_="builtins.eval"), "key '_target_' is refused"),
    (lambda c: c.update(format="pickle"), "is not a vtok tokenizer"),
])
def test_tampered_config_is_refused(tmp_path, edit, message):
    _tamper(tmp_path, edit)
    with pytest.raises((UnsafeConfigError, ValueError), match=message):
        Tokenizer.from_pretrained(str(tmp_path))


def test_folder_with_only_a_pickle_is_refused(tmp_path):
    export(_trained_a_little(FAMILIES["conv_vq"]), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"weights": 1}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"only pickled weights \(pytorch_model.bin\)"):
        Tokenizer.from_pretrained(str(tmp_path))


def test_loads_with_torch_safetensors_and_vtok_only(tmp_path):
    export(_trained_a_little(FAMILIES["latent_fsq_flexible"]), tmp_path)
    code = (
        "import sys\n"
        "for name in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'huggingface_hub'):\n"
        "    sys.modules[name] = None  # importing any of them now fails\n"
        "import torch\n"
        "from vtok import Tokenizer\n"
        f"t = Tokenizer.from_pretrained({str(tmp_path)!r})\n"
        "print(t.encode(torch.zeros(1, 3, 32, 32), num_tokens=2).indices.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([1, 2])" in result.stdout


def test_unknown_repo_offline_gives_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face hub"):
        Tokenizer.from_pretrained("someone/missing-tokenizer")


def test_push_without_network_fails_clearly(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(RuntimeError, match=r"could not push .* needs network access and a token"):
        push(tmp_path, "me/tokenizer")


def test_export_cli_takes_ema_weights_from_a_lightning_checkpoint(tmp_path):
    from vtok.losses import TokenizerLoss
    from vtok.training import TokenizerModule

    from .test_training import _loader, _trainer

    module = TokenizerModule(Tokenizer(**tiny_tokenizer_config()), TokenizerLoss(), lr=1e-3, warmup_steps=1,
                             total_steps=5, ema_decay=0.5)
    trainer = _trainer(5)
    trainer.fit(module, _loader())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert export_main([f"ckpt={tmp_path / 'last.ckpt'}", f"out={tmp_path / 'out'}"]) == 0
    loaded = Tokenizer.from_pretrained(str(tmp_path / "out"))
    ema = module.ema.model.state_dict()
    live = module.tokenizer.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, ema[name].cpu()), name
    assert any(not torch.equal(ema[k].cpu(), live[k].cpu()) for k in ema)  # EMA differs from the live weights
    live_loaded, source = load_tokenizer(tmp_path / "last.ckpt", weights="live")
    assert source.startswith("live") and all(torch.equal(v, live[k].cpu()) for k, v in live_loaded.state_dict().items())


def test_export_cli_help_and_missing_arguments(capsys):
    assert export_main(["--help"]) == 0
    assert "usage: vtok-export ckpt=... out=..." in capsys.readouterr().out
    assert export_main(["out=somewhere"]) == 2
    assert "vtok-export: missing required key(s): ckpt=..." in capsys.readouterr().err
