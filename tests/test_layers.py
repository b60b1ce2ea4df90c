"""The package's layers: evaluation, export and the tokenizers import and run without Lightning or the trainer."""

import subprocess
import sys
import textwrap

from .conftest import ROOT

BLOCK = textwrap.dedent("""
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("lightning", "pytorch_lightning") or name.startswith("vtok.training"):
                raise ImportError(f"{name} is blocked: this layer must not need it")

    sys.meta_path.insert(0, Blocked())
""")

# Every module below the trainer: all of them must import with Lightning and vtok.training blocked.
LIGHTNING_FREE = sorted([
    *(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
      for folder in ("vtok/tokenizers", "vtok/quantizers", "vtok/modules", "vtok/eval", "vtok/losses", "vtok/data",
                     "vtok/teachers")
      for path in (ROOT / folder).glob("*.py")
      if path.name != "datamodule.py"),  # the data module is the one Lightning part of vtok.data
    "vtok.hub", "vtok.checkpoint", "vtok.images", "vtok.distributed", "vtok.weights", "vtok.config",
    "vtok.llm", "vtok.llm.bridge", "vtok.llm.export", "vtok.llm.caption",
])


def _python(code: str, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_the_blocker_blocks():
    result = _python("import vtok.training")
    assert result.returncode != 0 and "is blocked" in result.stderr


def test_lower_layers_import_without_lightning():
    result = _python(f"import importlib\nfor name in {LIGHTNING_FREE!r}:\n    importlib.import_module(name)\n"
                     "print('imported', len(" + repr(LIGHTNING_FREE) + "))")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vtok.eval.evaluate" in LIGHTNING_FREE and "vtok.tokenizers.tokenizer" in LIGHTNING_FREE


def test_export_load_and_evaluate_without_lightning(tmp_path):
    code = f"""
        import json, runpy, sys, torch
        from vtok import Tokenizer
        from vtok.hub import main as export_main

        trunk = {{"kind": "conv", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1}}
        tokenizer = Tokenizer({{**trunk, "out_dim": 8}}, {{"kind": "vq", "codebook_size": 16}}, trunk, image_size=32)
        tokenizer.save_pretrained("{tmp_path}/saved")
        assert export_main(["ckpt={tmp_path}/saved", "out={tmp_path}/exported"]) == 0
        sys.argv = ["vtok.eval", "ckpt={tmp_path}/exported", "data=synthetic", "eval.fid=false", "eval.lpips=false",
                    "eval.baselines=false", "out={tmp_path}/report", "paths.root_dir={tmp_path}"]
        try:
            runpy.run_module("vtok.eval", run_name="__main__")
        except SystemExit as stop:
            assert not stop.code, stop.code
        report = json.loads(open("{tmp_path}/report/report.json").read())
        print("num_images", report["num_images"])
    """
    result = _python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_images 16" in result.stdout  # the synthetic validation set
    assert not list(ROOT.glob("*.log")), "a run left a log file in the working directory"
