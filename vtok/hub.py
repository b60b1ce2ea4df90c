"""Export trained tokenizers to Hugging Face folders and publish them.

``vtok-export ckpt=outputs/RUN/checkpoints/last.ckpt out=DIR [push=ORG/NAME] [weights=ema|live] [report=PATH]``
writes ``model.safetensors`` (EMA weights by default), ``config.json`` (plain data) and a ``README.md`` model card
carrying the evaluation report's numbers and protocol. Load it back with ``vtok.Tokenizer.from_pretrained(DIR)``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import vtok
from vtok.checkpoint import TrainingCheckpoint, load_tokenizer, read_checkpoint, tokenizer_from_checkpoint
from vtok.cli import key
from vtok.cli import run as run_command
from vtok.tokenizers import Tokenizer

__all__ = ["export", "load_tokenizer", "main", "model_card", "push"]

CARD_METRICS = ("psnr", "ssim", "sharpness", "lpips", "rfid", "codebook_usage", "perplexity", "bits_per_pixel",
                "tokens_per_image", "num_images")


def export(tokenizer: Tokenizer, out_dir: str | Path, report: dict[str, Any] | None = None,
           name: str | None = None, source: str | None = None, weights_step: int | None = None) -> Path:
    """Write the Hugging Face folder: ``model.safetensors``, ``config.json``, ``README.md``; ``config.json`` and the
    card name the training step of the weights (``weights_step``) and of the report (its ``train_steps``)."""
    out = Path(out_dir)
    extra: dict[str, Any] = {"vtok_version": vtok.__version__, "weights_step": weights_step}
    if report:
        extra["evaluation"] = {k: report[k] for k in CARD_METRICS if report.get(k) is not None}
        extra["report_step"] = report.get("train_steps")
    tokenizer.save_pretrained(str(out), extra=extra)
    (out / "README.md").write_text(model_card(tokenizer, name or out.name, report, source, weights_step))
    return out


def model_card(tokenizer: Tokenizer, name: str, report: dict[str, Any] | None, source: str | None,
               weights_step: int | None = None) -> str:
    """A model card: what the tokenizer is, how to load it, and its evaluation with the protocol."""
    cfg = tokenizer.config
    params = sum(p.numel() for p in tokenizer.parameters())
    lines = [
        "---", "library_name: vtok", "tags:", "- image-tokenizer", f"- {cfg['quantizer']['kind']}", "---", "",
        f"# {name}", "",
        f"An image tokenizer trained with [vtok](https://github.com/vtok/vtok): {cfg['encoder']['kind']} encoder, "
        f"{cfg['quantizer']['kind']} bottleneck, {cfg['decoder']['kind']} decoder; {params / 1e6:.2f} M parameters.",
        "",
        f"- image size: {tokenizer.image_size} (inputs in [-1, 1], RGB, `(B, 3, H, W)`)",
        f"- tokens per image: {tokenizer.num_tokens()}" + (" (any prefix decodes)" if tokenizer.flexible else ""),
        f"- vocabulary: {tokenizer.vocab_size if tokenizer.vocab_size else 'continuous'}; "
        f"bits per token: {tokenizer.bits_per_token:g}",
    ]
    if tokenizer.sampling is not None:
        settings = tokenizer.sampling
        lines.append(f"- generative decoder: decoding samples ({settings.steps} {settings.solver} steps, guidance "
                     f"{settings.guidance:g}, seed {settings.seed} by default; `decode(tokens, steps=, guidance=, "
                     "seed=, solver=)`); the same seed gives the same images")
    if source:
        lines.append(f"- weights: {source}")
    if weights_step is not None:
        lines.append(f"- weights from training step {weights_step}")
    lines += ["", "## Use", "", "```python", "from vtok import Tokenizer", "",
              f'tokenizer = Tokenizer.from_pretrained("{name}")',
              "tokens = tokenizer.encode(images)          # images: (B, 3, H, W) in [-1, 1]",
              "images = tokenizer.decode_indices(tokens.indices)" if tokenizer.vocab_size else
              "images = tokenizer.decode(tokens)", "```", ""]
    if report:
        lines += ["## Evaluation", ""]
        if report.get("train_steps") is not None:
            lines += [f"Measured on the weights of training step {report['train_steps']}"
                      + ("" if weights_step in (None, report["train_steps"]) else
                         f" (NOT the exported step {weights_step})") + ".", ""]
        lines += ["| metric | value |", "| --- | --- |"]
        for key in CARD_METRICS:
            if report.get(key) is not None:
                value = report[key]
                lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
        if report.get("psnr_over_seeds"):
            seeds, sampling = report["psnr_over_seeds"], report["sampling"]
            lines += ["", f"Sampled with {sampling['steps']} {sampling['solver']} steps, guidance "
                          f"{sampling['guidance']:g}, seed {sampling['seed']}; PSNR over {len(seeds['seeds'])} seeds "
                          f"{seeds['mean']:.2f} +- {seeds['std']:.2f} dB; against steps: " + ", ".join(
                              f"{k}: {v['psnr']:.2f} dB" for k, v in report["quality_vs_steps"].items())]
        if report.get("psnr_vs_tokens"):
            lines += ["", "PSNR against tokens: " + ", ".join(f"{k}: {v:.2f} dB" for k, v in
                                                           report["psnr_vs_tokens"].items())]
        if report.get("ar_probe"):
            probe, rd = report["ar_probe"], report["ar_probe"]["rate_distortion"]
            settings = probe["probe"]
            lines += ["", "## Autoregressive probe", "",
                      f"A causal transformer (width {settings['width']}, depth {settings['depth']}, "
                      f"{settings['steps']} steps on {settings['train_images']} training images) modelling the "
                      f"tokens, on {probe['images']} held-out images:", "",
                      "| rate | bits per pixel |", "| --- | --- |",
                      f"| raw (tokens x bits per token) | {probe['raw_bits_per_pixel']:.4f} |",
                      f"| under the prior ({probe['bits_per_token']:.3f} bits per token) | "
                      f"{probe['bits_per_pixel_under_prior']:.4f} |",
                      f"| coded (range coder, every round trip checked) | {probe['coded_bits_per_pixel']:.4f} |",
                      f"| JPEG at the same PSNR ({rd['tokenizer']['psnr']:.2f} dB) | "
                      f"{rd['jpeg']['bits_per_pixel']:.4f} |",
                      f"| WebP at the same PSNR | {rd['webp']['bits_per_pixel']:.4f} |"]
            if probe.get("sample_fid") is not None:
                lines += ["", f"Generation FID of {probe['sample_fid_samples']} unconditional prior samples against "
                              f"the {probe['images']} held-out images: {probe['sample_fid']:.2f}."]
        if report.get("protocol"):
            lines += ["", "Protocol:", "", "```json", json.dumps(report["protocol"], indent=2), "```"]
    else:
        lines += ["## Evaluation", "", "Not evaluated at export time: run `python -m vtok.eval ckpt=THIS_FOLDER`."]
    return "\n".join(lines) + "\n"


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face hub; returns the repo URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as error:
        raise RuntimeError(
            f"could not push {folder} to the hub as {repo_id} ({type(error).__name__}: {error}). It needs network "
            "access and a token (`huggingface-cli login` or HF_TOKEN); the exported folder is complete, so you can "
            "upload it later from a connected machine."
        ) from error
    return f"https://huggingface.co/{repo_id}"


@dataclass
class ExportCommand:
    """The keys of ``vtok-export``."""

    ckpt: str = key(help="a training checkpoint (outputs/RUN/checkpoints/last.ckpt) or an exported folder")
    out: str = key(help="the folder to write")
    weights: str = key("ema", "ema (the weight average, when the run kept one) or live")
    report: str | None = key(None, "report.json for the model card (default: the run's eval/report.json or "
                                      "report.json beside the checkpoint)")
    name: str | None = key(None, "model name in the card (default: push's repo id, else the folder name)")
    push: str | None = key(None, "also upload to the hub as ORG/NAME (needs network access and a token)")
    format: str = key("vtok", "vtok (model.safetensors, config.json, model card) or diffusers (a folder that "
                              "diffusers' AutoencoderKL / VQModel.from_pretrained load: conv KL or VQ tokenizers "
                              "in the reference layout; others are refused, naming what is missing)")


EXPORT_HELP = ("Write a trained tokenizer in Hugging Face hub format: model.safetensors, config.json (plain data, no "
               "code references) and a model card (README.md) with the evaluation report's numbers; an ETT run's "
               "LLM bridge goes to llm_bridge/.")


def main(argv: list[str] | None = None) -> int:
    """``vtok-export ckpt=PATH out=DIR [weights=ema|live] [report=PATH] [name=NAME] [push=ORG/NAME]``."""
    return run_command("vtok-export", EXPORT_HELP, ExportCommand, _export_command, argv)


def _export_command(args: ExportCommand) -> int:
    ckpt = Path(args.ckpt)
    bridge = weights_step = None
    if ckpt.suffix == ".ckpt":  # read once: tokenizer, LLM bridge and step
        checkpoint = read_checkpoint(ckpt)
        tokenizer, source = tokenizer_from_checkpoint(checkpoint, args.weights)
        bridge, weights_step = _bridge_of(checkpoint), checkpoint.step
    else:
        tokenizer, source = load_tokenizer(ckpt, weights=args.weights)
    if args.format == "diffusers":
        from vtok.published import write_diffusers

        print(f"exported {source} to {write_diffusers(tokenizer, args.out)} as a diffusers folder")
        return 0
    if args.format != "vtok":
        print(f"vtok-export: format={args.format!r}: use vtok or diffusers", file=sys.stderr)
        return 2
    report_path = Path(args.report) if args.report else _report_beside(ckpt)
    report = json.loads(report_path.read_text()) if report_path and report_path.is_file() else None
    out = export(tokenizer, args.out, report, name=args.name or args.push, source=source, weights_step=weights_step)
    print(f"exported {source} to {out}" + (f" with the report {report_path}" if report else " (no report found)"))
    if report and weights_step is not None and report.get("train_steps") not in (None, weights_step):
        print(f"WARNING: the weights are from step {weights_step} but the report describes step "
              f"{report['train_steps']}: re-run python -m vtok.eval on this checkpoint for a matching card",
              file=sys.stderr)
    if bridge is not None:
        from vtok.llm.export import save_bridge

        print(f"exported the LLM bridge (projector, markers, trained LLM weights) to {save_bridge(out, *bridge)}")
    if args.push:
        print(f"pushed: {push(out, args.push)}")
    return 0


def _bridge_of(checkpoint: TrainingCheckpoint) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The LLM bridge an ETT training checkpoint holds (``None`` for other checkpoints)."""
    from vtok.llm.export import bridge_from_checkpoint

    return bridge_from_checkpoint(checkpoint)


def _report_beside(ckpt: Path) -> Path | None:
    if ckpt.suffix == ".ckpt" and ckpt.parent.name == "checkpoints":
        for candidate in (ckpt.parent.parent / "eval" / "report.json", ckpt.parent.parent / "report.json"):
            if candidate.is_file():
                return candidate
    return None


if __name__ == "__main__":
    raise SystemExit(main())
