"""Evaluation from a config: build the metric networks the protocol asks for, run, and record the protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vtok.tokenizers import Tokenizer

from .evaluate import evaluate_to_dir
from .fid import FIDMeter

# How each evaluation crop makes the reference images: the names papers' numbers are compared under.
CROPS = {
    "center": "vtok: resize the short side to image_size (bicubic, antialiased), cut the centre",
    "adm": "ADM (guided-diffusion center_crop_arr; LlamaGen, TokenFlow): halve with a box filter while the short side "
           "is >= 2 x image_size, bicubic to image_size, cut the centre",
    "resize_bicubic": "TiTok: torchvision Resize(image_size, bicubic, antialias) then CenterCrop(image_size) on PIL",
    "resize_bilinear": "Open-MAGVIT2 / IBQ: torchvision Resize(image_size) (bilinear) then CenterCrop(image_size)",
    "full": "whole images, sides cut down to a multiple of the tokenizer's factor",
}


def describe_protocol(eval_cfg: Any, data_cfg: Any) -> dict[str, Any]:
    """Everything that fixes the numbers: reference set, crop, size, image count, metric settings."""
    split = eval_cfg.get("split", "val")
    val = data_cfg.get(split) or {}
    transform = val.get("transform") or {}
    return {
        "split": split,
        "reference_set": str(val.get("urls") or val.get("root") or val.get("_target_") or "unknown"),
        "crop": str(transform.get("mode", "fixed-size dataset")),
        "crop_protocol": CROPS.get(str(transform.get("mode")), "the dataset's own images"),
        "image_size": int(data_cfg.get("image_size")) if transform.get("mode") != "full" else None,
        "multiple": int(transform.get("multiple", 1)) if transform.get("mode") == "full" else None,
        "max_images": eval_cfg.get("max_images"),
        "psnr": "8-bit RGB, per image, mean over images",
        "ssim": "8-bit RGB, Gaussian window 11, sigma 1.5, mean over images",
        "lpips": f"lpips {eval_cfg.get('lpips_net')}, inputs in [-1, 1]" if eval_cfg.get("lpips") else None,
        "sampling": ("generative decoders: PSNR / SSIM at the report's sampler settings; psnr_over_seeds over "
                     "eval.sampling.seeds seeds and quality_vs_steps on the first eval.sampling.images images"),
        "rfid": ("torchmetrics FrechetInceptionDistance, 2048-d pool features, images to uint8 then 299x299; "
                 "reference = the originals of the same images") if eval_cfg.get("fid") else None,
    }


def evaluate_from_config(tokenizer: Tokenizer, loader: Any, eval_cfg: Any, data_cfg: Any, out_dir: Path,
                         extra: dict[str, Any] | None = None, device: Any = "cpu", text_encoder: Any = None,
                         terms: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``tokenizer`` on ``loader`` with the metrics ``eval_cfg`` (``configs/eval/default.yaml``) asks for;
    with a run's ``text_encoder`` and semantic loss ``terms``, also their held-out figures.

    Raises:
        MissingWeightsError: rFID or LPIPS is asked for and its weights file is missing (naming the key).
    """
    protocol = describe_protocol(eval_cfg, data_cfg)
    fid = lpips = None
    if eval_cfg.get("fid"):
        reference = {k: protocol[k] for k in ("reference_set", "crop", "image_size", "multiple", "max_images")}
        fid = FIDMeter(eval_cfg.get("inception_path"), cache_dir=eval_cfg.get("fid_cache_dir"), reference=reference,
                       device=device)
        protocol["inception_weights"] = fid.weights
        protocol["fid_reference_cache"] = str(fid.cache_file)
    if eval_cfg.get("lpips"):
        from vtok.losses.perceptual import LPIPS

        lpips = LPIPS(eval_cfg.get("lpips_net", "alex"), eval_cfg.get("lpips_backbone_path"),
                      config_key="eval.lpips_backbone_path").to(device)
    skipped = {name: f"eval.{name}=false" for name in ("fid", "lpips") if not eval_cfg.get(name)}
    return evaluate_to_dir(
        tokenizer, loader, out_dir, max_images=eval_cfg.get("max_images"), baselines=eval_cfg.get("baselines", True),
        baseline_max_images=eval_cfg.get("baseline_max_images", 64), fid=fid, lpips=lpips,
        target_psnr=eval_cfg.get("target_psnr"), text_encoder=text_encoder, terms=terms,
        sampling=_plain(eval_cfg.get("sampling")), max_depth=eval_cfg.get("max_depth"),
        extra={"protocol": protocol, "skipped_metrics": skipped, **(extra or {})},
    )


def _plain(value: Any) -> dict[str, Any] | None:
    """An OmegaConf node or mapping -> a plain dict (``None`` stays ``None``)."""
    if value is None:
        return None
    return {k: (list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v)
            for k, v in dict(value).items()}
