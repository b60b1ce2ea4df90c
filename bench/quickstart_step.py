"""Where a quick-start training step spends its time: data, forward, backward, optimiser, EMA, and the rest.

    THP_MEM_ALLOC_ENABLE=1 python bench/quickstart_step.py [--steps 200]

Two measurements of the same recipe (``experiment=quickstart``, its model, loss, batch and data):
1. the parts, timed one by one in a plain loop that does exactly what ``TokenizerModule.training_step`` does;
2. the whole step as ``train.py`` runs it (Lightning, logging, callbacks, checkpoint cadence), from the trainer's
   own steps per second over the same number of steps.
The difference between (2) and the sum of (1) is the framework's share: Lightning's loop, logging, callbacks.

    python bench/quickstart_step.py --against 7e2e2f1 [--steps 1000 --evaluate]

instead runs ``train.py experiment=quickstart`` for ``--steps`` steps in this checkout and in a temporary git worktree
of another commit, alternating ``--repeats`` times, and reports steps per second of training (``train_seconds`` in
the checkpoint) for both; with ``--evaluate``, the held-out PSNR after that fixed number of steps as well.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def compose(root: str, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import vtok.config  # noqa: F401  (resolvers)

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    with initialize_config_dir(version_base="1.3", config_dir=configs):
        cfg = hydra_compose(config_name="train", return_hydra_config=True,
                            overrides=["experiment=quickstart", f"paths.root_dir={root}", *overrides])
    HydraConfig.instance().set_config(cfg)
    return cfg


def parts(steps: int, root: str) -> dict[str, float]:
    import torch

    from vtok.training.run import build

    cfg = compose(root, "module.time_budget=null", "evaluate=false")
    module, datamodule, _ = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    module.train()
    times: dict[str, list[float]] = {k: [] for k in ("data", "forward", "backward", "clip", "optimizer", "ema")}
    for step in range(steps + 5):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        output = module.tokenizer(batch["image"], features=module.loss.feature_names)
        loss, _ = module.loss.generator_loss(batch["image"], output, step, module.tokenizer.last_layer)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(module.tokenizer.parameters(), 1.0, foreach=True)
        t4 = time.perf_counter()
        optimizer.step()
        scheduler.step()
        t5 = time.perf_counter()
        module.ema.update(module.tokenizer)
        t6 = time.perf_counter()
        if step >= 5:
            for key, (a, b) in zip(times, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6))):
                times[key].append(b - a)
    return {key: statistics.median(values) for key, values in times.items()}


def whole(steps: int, root: str) -> float:
    from vtok.training.run import fit

    cfg = compose(root, f"trainer.max_steps={steps}", "module.time_budget=null", "evaluate=false",
                  "trainer.val_check_interval=100000", "trainer.max_time=null")
    module, _, trainer = fit(cfg)
    return module.train_seconds / trainer.global_step


def train_py(tree: str, steps: int, root: str, evaluate: bool) -> tuple[float, float | None]:
    """``train.py experiment=quickstart`` in ``tree`` for ``steps`` steps -> (steps per second, held-out PSNR)."""
    import glob
    import json
    import subprocess

    import torch

    subprocess.run([sys.executable, "train.py", "experiment=quickstart", f"trainer.max_steps={steps}",
                    "module.time_budget=null", f"evaluate={str(evaluate).lower()}", "trainer.max_time=null",
                    "trainer.val_check_interval=100000", f"paths.root_dir={root}"],
                   cwd=tree, check=True, capture_output=True)
    checkpoint = torch.load(glob.glob(f"{root}/**/last.ckpt", recursive=True)[0], map_location="cpu",
                            weights_only=False)
    psnr = None
    if evaluate:
        with open(glob.glob(f"{root}/**/report.json", recursive=True)[0]) as f:
            report = json.load(f)
        psnr = report.get("metrics", report)["psnr"]
    return checkpoint["global_step"] / checkpoint["train_seconds"], psnr


def against(commit: str, steps: int, repeats: int, evaluate: bool) -> None:
    import shutil
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        other = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", other, commit], cwd=here, check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[tuple[float, float | None]]] = {commit: [], "this checkout": []}
            for _ in range(repeats):  # alternate, so both see the same machine state
                for name, tree in ((commit, other), ("this checkout", here)):
                    root = os.path.join(tmp, f"root-{len(runs[name])}-{name.replace(' ', '-')}")
                    runs[name].append(train_py(tree, steps, root, evaluate))
                    shutil.rmtree(root, ignore_errors=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", other], cwd=here, capture_output=True)
    print(f"quick start, {steps} steps, {repeats} runs each; THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    print("| checkout | steps/s (median; min-max) | held-out PSNR dB |")
    print("|---|---|---|")
    for name, values in runs.items():
        rates = [r for r, _ in values]
        psnrs = ", ".join(f"{p:.2f}" for _, p in values if p is not None) or "-"
        print(f"| {name} | {statistics.median(rates):.2f} ({min(rates):.2f}-{max(rates):.2f}) | {psnrs} |")
    ratio = statistics.median(r for r, _ in runs["this checkout"]) / statistics.median(r for r, _ in runs[commit])
    print(f"| this checkout / {commit} | {ratio:.2f}x | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--against", metavar="COMMIT", help="compare train.py's steps/s with another commit")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--evaluate", action="store_true", help="with --against: held-out PSNR after --steps")
    args = parser.parse_args()
    if args.against:
        against(args.against, args.steps, args.repeats, args.evaluate)
        return
    with tempfile.TemporaryDirectory() as root:
        split = parts(args.steps, root)
        per_step = whole(args.steps, root)
    total = sum(split.values())
    print(f"quick start, {args.steps} steps; THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    print("| part | ms per step | share of train.py's step |")
    print("|---|---|---|")
    for key, value in split.items():
        print(f"| {key} | {value * 1e3:.1f} | {value / per_step:.0%} |")
    print(f"| Lightning loop, logging, callbacks (the rest) | {(per_step - total) * 1e3:.1f} | "
          f"{(per_step - total) / per_step:.0%} |")
    print(f"| **train.py step** | **{per_step * 1e3:.1f}** ({1 / per_step:.2f} steps/s) | 100% |")


if __name__ == "__main__":
    main()
