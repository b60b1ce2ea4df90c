import subprocess
import sys

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from .conftest import ROOT


def _compose(overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_command_line_override_changes_the_model():
    from hydra.core.hydra_config import HydraConfig

    base = _compose(["experiment=quickstart"])
    changed = _compose(["experiment=quickstart", "model.encoder.channels=24", "quantizer.codebook_size=1024"])
    HydraConfig.instance().set_config(changed)
    a, b = instantiate(base.model), instantiate(changed.model)
    assert a.encoder.layers[1].out_channels == 32 and b.encoder.layers[1].out_channels == 24
    assert b.decoder.conv_out.in_channels == 24  # the decoder follows the encoder's width
    assert a.vocab_size == 512 and b.vocab_size == 1024


def test_every_experiment_composes():
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        cfg = _compose([f"experiment={path.stem}"])
        assert cfg.experiment_name == path.stem


def test_unknown_choice_lists_available_options():
    result = subprocess.run([sys.executable, "train.py", "quantizer=nope"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'quantizer/nope'" in result.stderr
    assert "Available options in 'quantizer':" in result.stderr and "vq" in result.stderr


def test_unknown_key_is_an_error():
    result = subprocess.run([sys.executable, "train.py", "model.encoder.chanels=3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "chanels" in result.stderr
