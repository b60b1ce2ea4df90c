"""The entry layer behind ``python train.py``: train, then (``evaluate=true``) evaluate and summarise.

This is the one module that imports both :mod:`vtok.training` and :mod:`vtok.eval`; neither imports the other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vtok.eval.protocol import evaluate_from_config
from vtok.exit_deadline import install_exit_deadline, stop_child_processes
from vtok.training.run import fit

# what report.json keeps of the probe (the whole report is RUN/probe/probe_report.json)
PROBE_FIGURES = ("bits_per_token", "bits_per_pixel_under_prior", "coded_bits_per_pixel", "coded_bytes_per_image",
                 "raw_bits_per_pixel", "verified_round_trips", "images", "rate_distortion", "probe", "report_path",
                 "sample_fid", "sample_fid_samples", "ranks")

log = logging.getLogger(__name__)

# A run slower than this share of the speed its recipe expects is flagged.
SLOW_SHARE = 0.6


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured tokenizer; with ``evaluate=true`` also write the evaluation report.

    Under DDP every rank runs this: each evaluates its share of the validation set and rank 0 writes the report.

    Returns:
        ``{"run_dir", "checkpoint", "train_steps", "train_seconds", "time_budget",
        "expected_steps_per_second",
        "is_global_zero"}`` and, when evaluated,
        ``"report"``.
    """
    install_exit_deadline(cfg.get("exit_grace_s", 30))
    try:
        module, datamodule, trainer = fit(cfg)
    except BaseException:
        stop_child_processes()  # the ranks this one started (Lightning's launcher) must not outlive it
        raise
    result: dict[str, Any] = {
        "run_dir": str(cfg.paths.run_dir),
        "checkpoint": str(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt"),
        "train_steps": trainer.global_step,
        "train_seconds": module.train_seconds,
        "time_budget": cfg.module.get("time_budget"),
        "expected_steps_per_second": cfg.get("expected_steps_per_second"),
        "is_global_zero": trainer.is_global_zero,
    }
    if cfg.evaluate:  # every rank evaluates its share of the set (rank 0 writes the report)
        split = cfg.eval.get("split", "val")
        datamodule.setup("test" if split == "test" else "validate")
        terms = dict(module.loss.terms.items())
        if module.sharded:  # a sharded LLM would gather its layers per batch: ranks' batch counts differ
            skipped = [name for name, term in terms.items() if term.shardable_modules()]
            terms = {name: term for name, term in terms.items() if name not in skipped}
            if skipped:
                log.warning("trainer=fsdp: held-out figures of %s are left out of the report (their LLM is sharded);"
                            " evaluate its checkpoint on one process for them", skipped)
        result["report"] = evaluate_from_config(
            module.full_eval_tokenizer().to(module.device).eval(),
            datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader(), cfg.eval, cfg.data,
            Path(cfg.eval.get("out_dir") or cfg.paths.run_dir), device=module.device,
            text_encoder=module.loss.text_encoder,
            terms=terms,
            extra={"train_steps": result["train_steps"], "train_seconds": result["train_seconds"],
                   # over the trainer's usage window (recent training batches), for comparison with held-out
                   "codebook_usage_train": _float(trainer.callback_metrics.get("train/codebook_usage")),
                   "perplexity_train": _float(trainer.callback_metrics.get("train/codebook_perplexity"))},
        )
    if cfg.evaluate and cfg.eval.get("ar_probe"):  # the autoregressive probe; every rank takes its share
        from vtok.probe.__main__ import probe_tokenizer

        tokenizer = module.full_eval_tokenizer().to(module.device).eval()  # a collective under FSDP: every rank
        about = {"checkpoint": result["checkpoint"], "train_steps": result["train_steps"]}
        result["probe"] = probe_tokenizer(tokenizer, cfg, Path(cfg.paths.run_dir) / "probe", module.device, about)
        report = result.get("report")
        if trainer.is_global_zero and report and report.get("report_path"):  # beside the reconstruction figures
            report["ar_probe"] = {k: result["probe"][k] for k in PROBE_FIGURES if k in result["probe"]}
            Path(report["report_path"]).write_text(json.dumps(report, indent=2))
    return result


def summary(result: dict[str, Any]) -> str:
    """What a person reads at the end of a run: steps trained, held-out quality against the baselines, paths."""
    lines = [f"\ntrained {result['train_steps']:,} steps in {result['train_seconds']:.0f} s of training"
             + (f" (time budget {result['time_budget']:.0f} s)" if result.get("time_budget") else "")]
    expected = result.get("expected_steps_per_second")
    rate = result["train_steps"] / max(result["train_seconds"], 1e-9)
    if expected and result["train_steps"] and rate < SLOW_SHARE * expected:
        budget = result.get("time_budget")
        fewer = (f": {result['train_steps']:,} steps where the budget allows about {expected * budget:,.0f}"
                 if budget else "")
        lines.append(f"  WARNING: {rate:.1f} steps/s where this recipe expects about {expected:g} (a busy or slow "
                     f"machine){fewer}, so quality is lower than the README's numbers")
    report = result.get("report")
    if report:
        split = report.get("protocol", {}).get("split", "val")
        lines.append(f"held-out PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.3f}, sharpness "
                     f"{report['sharpness']:.2f} at "
                     f"{report['bits_per_pixel']:.4f} bits per pixel on {report['num_images']} "
                     f"{'test' if split == 'test' else 'validation'} images")
        if "jpeg" in report:
            lines.append(f"  JPEG at {report['jpeg']['bits_per_pixel']:.4f} bpp: {report['jpeg']['psnr']:.2f} dB; "
                         f"patch-mean tokenizer at {report['patch_mean']['bits_per_pixel']:.4f} bpp: "
                         f"{report['patch_mean']['psnr']:.2f} dB")
        if "sampling" in report:  # a generative decoder: its settings and its spread over seeds
            s, seeds = report["sampling"], report["psnr_over_seeds"]
            lines.append(f"  sampled: {s['steps']} {s['solver']} steps, guidance {s['guidance']:g}, seed {s['seed']}; "
                         f"PSNR over {len(seeds['seeds'])} seeds {seeds['mean']:.2f} +- {seeds['std']:.2f} dB; "
                         "by steps " + ", ".join(f"{k}: {v['psnr']:.2f} dB"
                                                 for k, v in report["quality_vs_steps"].items()))
        if report.get("skipped_samples"):
            lines.append(f"  left out of every metric, unusable samples by kind: {report['skipped_samples']}")
        if "codebook_usage" in report:
            lines.append(f"  codebook usage {report['codebook_usage']:.1%} on held-out images (uniform bound "
                         f"{report['codebook_usage_uniform_bound']:.1%}), perplexity {report['perplexity']:.0f}")
        for name, figures in report.get("semantic", {}).items():  # each term wrote its own lines
            headline, *details = figures.get("summary") or ["(no summary)"]
            lines += [f"  {name}: {headline}", *(f"    {line}" for line in details)]
        lines.append(f"report: {report['report_path']}")
        lines.append(f"reconstructions: {report['reconstructions_path']}")
    lines.append(f"checkpoint: {result['checkpoint']}")
    return "\n".join(lines)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (torch.Tensor, int, float)) else None
