"""``python -m vtok.probe ckpt=... [data=...] [probe.*=...]``: how well a learned prior models a tokenizer's tokens.

See ``configs/probe.yaml``. One process; the prior's state is saved every ``probe.save_every`` steps and a rerun with
the same settings resumes it; the training tokens are cached under the output folder, keyed by the weights.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vtok.config import config_dir

log = logging.getLogger("vtok.probe")


def run(cfg: DictConfig) -> dict:
    """Load ``cfg.ckpt`` and probe it (:func:`probe_tokenizer`); returns the report."""
    from vtok.checkpoint import load_tokenizer
    from vtok.eval.__main__ import default_out_dir

    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    tokenizer, source = load_tokenizer(cfg.ckpt, weights=cfg.weights)
    out = Path(cfg.out) if cfg.out else default_out_dir(Path(str(cfg.ckpt)), Path(cfg.paths.output_dir)).with_name(
        "probe")
    return probe_tokenizer(tokenizer.to(device).eval(), cfg, out, device, {"checkpoint": str(cfg.ckpt),
                                                                           "weights": source})


def probe_tokenizer(tokenizer, cfg: DictConfig, out: Path, device: torch.device, extra: dict | None = None) -> dict:
    """Encode ``cfg.data``'s training stream (cached), train the prior ``cfg.probe`` describes (resumable), measure
    the held-out split; writes ``probe_report.json`` and ``samples.png`` into ``out`` and returns the report.
    Held-out images are centre-cropped to ``data.image_size`` whatever ``data.val_crop`` says (one token grid)."""
    from hydra.utils import instantiate

    from vtok.data.validation import build_dataset, validation_loader

    from .prior import TokenPrior
    from .run import encode_images, measure, sample, train_prior, weights_key, write_samples

    if tokenizer.vocab_size is None:
        raise ValueError("this is a continuous tokenizer: the probe models discrete token ids")
    cfg = OmegaConf.merge(cfg, {"data": {"val_crop": "center"}})
    p = cfg.probe
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data.get("prepare") is not None:
        instantiate(cfg.data.prepare)()
    key = weights_key(tokenizer)
    cache = out / f"train_tokens-{key}-{p.train_images}.pt"
    if cache.exists():
        cached = torch.load(cache, weights_only=True)
        train, pixels = cached["sequences"], cached["pixels"]
    else:
        stream = torch.utils.data.DataLoader(build_dataset(instantiate(cfg.data.train)), batch_size=cfg.data.batch_size,
                                             num_workers=0)
        train, pixels, _ = encode_images(tokenizer, stream, p.train_images, device, "encoding training images")
        torch.save({"sequences": train, "pixels": pixels}, cache)
    if cfg.data.get(p.split) is None:
        raise ValueError(f"probe.split={p.split}, but the data config has no data.{p.split}")
    held_out_loader = validation_loader(build_dataset(instantiate(cfg.data[p.split])), cfg.data.val_batch_size, 0)
    held_out, held_pixels, held_images = encode_images(tokenizer, held_out_loader, p.eval_images, device,
                                                       "encoding held-out images")
    length = max(len(s) for s in [*train, *held_out])
    prior = TokenPrior(tokenizer.vocab_size, length, p.width, p.depth, p.heads).to(device)
    state = out / f"prior_state-{key}.pt"
    trained = train_prior(prior, train, p.steps, p.batch_size, p.lr, p.warmup_steps, state, p.save_every,
                          cfg.get("seed", 0), device, p.get("max_steps_this_call"))
    figures = measure(prior, held_out, held_pixels, p.verify_images, device)
    figures["rate_distortion"] = rate_distortion(tokenizer, held_images, figures, device)
    grid = tokenizer.encode(held_images[0][None].to(device)).indices.shape[1:]
    samples = write_samples(tokenizer, sample(prior, length, p.samples, p.temperature, cfg.get("seed", 0), device),
                            grid, out / "samples.png")
    report = {
        **(extra or {}), "weights_key": key, "probe": OmegaConf.to_container(p, resolve=True),
        "split": p.split, "train_sequences": len(train), "steps_this_call": trained,
        "prior_parameters": sum(q.numel() for q in prior.parameters()),
        "raw_bits_per_pixel": figures["rate_distortion"]["tokenizer"]["raw_bits_per_pixel"],
        **figures, "samples_path": str(samples),
    }
    report_path = out / "probe_report.json"
    report["report_path"] = str(report_path)
    report_path.write_text(json.dumps(report, indent=2))
    rd = figures["rate_distortion"]
    print(f"probe, held-out: {figures['bits_per_token']:.3f} bits per token under the prior "
          f"(raw {tokenizer.bits_per_token:.2f}); {figures['bits_per_pixel_under_prior']:.4f} bpp under the prior, "
          f"{figures['coded_bits_per_pixel']:.4f} bpp coded ({figures['coded_bytes_per_image']:.1f} bytes per image, "
          f"{figures['verified_round_trips']} round trips exact), raw {report['raw_bits_per_pixel']:.4f} bpp")
    print(f"at the tokenizer's {rd['tokenizer']['psnr']:.2f} dB: JPEG needs {rd['jpeg']['bits_per_pixel']:.4f} bpp, "
          f"WebP {rd['webp']['bits_per_pixel']:.4f} bpp")
    print(f"probe report: {report_path}\nsamples: {samples}")
    return report


def rate_distortion(tokenizer, images: list, figures: dict, device: torch.device) -> dict:
    """The tokenizer's held-out PSNR at its three rates (raw, under the prior, coded), and the rate JPEG and WebP
    (Pillow) need for the same PSNR on each image."""
    from vtok.eval.baselines import codec_at_psnr
    from vtok.eval.metrics import psnr

    scores = []
    with torch.no_grad():
        for image in images:
            x = image[None].to(device)
            scores.append(float(psnr(tokenizer.decode(tokenizer.encode(x)).clamp(-1, 1), x)))
    out = {"tokenizer": {"psnr": sum(scores) / len(scores),
                         "raw_bits_per_pixel": tokenizer.num_tokens(int(images[0].shape[-1])) *
                         tokenizer.bits_per_token / (images[0].shape[-1] * images[0].shape[-2]),
                         "bits_per_pixel_under_prior": figures["bits_per_pixel_under_prior"],
                         "coded_bits_per_pixel": figures["coded_bits_per_pixel"]}}
    for codec in ("jpeg", "webp"):
        result = codec_at_psnr(images, scores, codec)
        out[codec] = {"psnr": result.psnr, "bits_per_pixel": result.bits_per_pixel, "setting": result.setting}
    return out


def main() -> None:
    import hydra

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hydra.main(config_path=str(config_dir()), config_name="probe", version_base="1.3")(run)()


if __name__ == "__main__":
    sys.exit(main())
