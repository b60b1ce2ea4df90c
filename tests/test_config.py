import subprocess
import sys

import pytest
from hydra.utils import instantiate

from .conftest import ROOT, compose_config

PRESETS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


def test_command_line_override_changes_the_model():
    base = compose_config("experiment=quickstart", toy=False)
    changed = compose_config("experiment=quickstart", "arch.width=24", "quantizer.codebook_size=1024", toy=False)
    a, b = instantiate(base.model), instantiate(changed.model)
    assert a.encoder.layers[1].out_channels == 32 and b.encoder.layers[1].out_channels == 24
    assert b.decoder.conv_out.in_channels == 24  # the decoder follows arch.decoder_width = arch.width
    assert a.vocab_size == 512 and b.vocab_size == 1024


@pytest.mark.parametrize("preset", PRESETS)
def test_toy_scale_shrinks_every_preset_the_same_way(preset):
    full = compose_config(f"experiment={preset}", toy=False)
    toy = compose_config(f"experiment={preset}")
    assert toy.experiment_name == full.experiment_name == preset
    assert toy.model.encoder.kind == full.model.encoder.kind and toy.quantizer.kind == full.quantizer.kind
    # every family reads its sizes from arch: the toy widths reach both encoder and decoder
    widths = [v for part in ("encoder", "decoder") for k, v in toy.model[part].items() if k in ("channels", "width")]
    assert widths and set(widths) == {16}, widths
    assert toy.data.image_size == 32 and toy.trainer.max_steps == 3


def test_one_crop_key_for_every_image_data_source():
    for data in ("samples", "folder", "webdataset"):
        cfg = compose_config(f"data={data}", "data.val_crop=full", toy=False)
        assert cfg.data.val.transform.mode == "full", data


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


def test_the_readme_group_table_lists_every_choice_and_counts_the_presets():
    """The README's config-group table names every file of each group, and its preset count is the real one."""
    import re

    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", readme, flags=re.M))
    for group in ("model", "quantizer", "loss", "data", "trainer", "logger", "scale"):
        listed = set(re.findall(r"`([\w-]+)`", rows[group]))
        files = {path.stem for path in (ROOT / "configs" / group).glob("*.yaml")}
        assert listed == files, (group, sorted(files - listed), sorted(listed - files))
    presets = len(list((ROOT / "configs" / "experiment").glob("*.yaml")))
    assert f"{presets} experiment presets" in readme
