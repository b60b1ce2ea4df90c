"""The package's layers (``vtok/layers.py``): every import of every module points down or sideways within its layer,
third-party frameworks stay where they belong, the README says the same, and the lower layers really run without
Lightning or the trainer."""

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from vtok.layers import LAYERS, ONLY_IN, layer_of

from .conftest import ROOT

BLOCK = textwrap.dedent("""
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("lightning", "pytorch_lightning") or name.startswith("vtok.training"):
                raise ImportError(f"{name} is blocked: this layer must not need it")

    sys.meta_path.insert(0, Blocked())
""")


def _modules() -> dict[str, Path]:
    files = [*ROOT.glob("vtok/**/*.py"), ROOT / "train.py"]
    names = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in the file, inside functions too, and every
    ``torch.distributed`` reached as an attribute."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                found += [(f"{target}.{alias.name}" if not node.module else target, node.lineno)
                          for alias in node.names]
            else:
                found += [(node.module, node.lineno)]
        elif isinstance(node, ast.Attribute) and node.attr == "distributed" and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            found.append(("torch.distributed", node.lineno))
    return found


def _allowed(importer: str, owners: tuple[str, ...]) -> bool:
    return any(importer == o or importer.startswith(o + ".") for o in owners)


def test_every_module_has_a_layer():
    orphans = sorted(name for name in _modules() if layer_of(name) is None)
    assert not orphans, f"add these modules to vtok/layers.py: {orphans}"


def test_no_module_imports_from_a_layer_above_it_or_a_framework_outside_its_home():
    modules = _modules()
    problems = []
    for name, path in modules.items():
        own = layer_of(name)
        for target, line in _imports(name, path):
            if target in modules or target.startswith("vtok."):
                # ``from vtok.x import y`` may name a module or an attribute: the deepest known module decides
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                theirs = layer_of(target)
                if theirs is not None and theirs.number > own.number:
                    problems.append(f"{path.relative_to(ROOT)}:{line} (layer {own.number}) imports {target} "
                                    f"(layer {theirs.number})")
            for framework, owners in ONLY_IN.items():
                if (target == framework or target.startswith(framework + ".")) and not _allowed(name, owners):
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which only {owners} may")
    assert not problems, "\n".join(problems)


def test_the_layer_test_catches_an_upward_import(tmp_path):
    """The checker itself: a tokenizer module that imported the trainer, or called torch.distributed, is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom vtok.training import TokenizerModule\n\n\n"
                   "def f():\n    return torch.distributed\n")
    found = _imports("vtok.tokenizers.bad", bad)
    assert ("vtok.training", 2) in found and ("torch.distributed", 6) in found
    assert layer_of("vtok.training.module").number > layer_of("vtok.tokenizers.bad").number


def _readme_layers() -> dict[int, set[str]]:
    text = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    rows = re.findall(r"^\| (\d)\. [^|]+\| ([^|]+) \|", text, flags=re.M)
    return {int(number): set(re.findall(r"`([^`]+)`", cell)) for number, cell in rows}


def _spelling(member: str) -> str:
    if member == "train":
        return "train.py"
    if member == "vtok":
        return "vtok/__init__.py"
    path = member.replace(".", "/")
    return f"{path}/" if (ROOT / path).is_dir() else f"{path}.py"


def test_the_readme_layout_table_is_the_layer_table():
    readme = _readme_layers()
    assert sorted(readme) == [layer.number for layer in LAYERS]
    for layer in LAYERS:
        assert readme[layer.number] == {_spelling(m) for m in layer.members}, layer.name


# Every module below the trainer: all of them must import with Lightning and vtok.training blocked.
LIGHTNING_FREE = sorted(name for name in _modules()
                        if layer_of(name).number in (1, 2, 3, 5) and name not in ("vtok.eval.__main__",)
                        and not name.startswith("vtok.data"))


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
    assert "vtok.checkpoint" in LIGHTNING_FREE and "vtok.hub" in LIGHTNING_FREE


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
