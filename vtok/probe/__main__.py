"""``python -m vtok.probe ckpt=... [data=...] [probe.*=...]``: how well a learned prior models a tokenizer's tokens.

See ``configs/probe.yaml``. One process; the prior's state is saved every ``probe.save_every`` steps and a rerun with
the same settings resumes it; the training tokens are cached under the output folder, keyed by the weights.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vtok.config import config_dir
from vtok.distributed import process_group

log = logging.getLogger("vtok.probe")


def run(cfg: DictConfig) -> dict:
    """Load ``cfg.ckpt`` and probe it (:func:`probe_tokenizer`); returns the report. Under ``torchrun`` every rank
    runs this, the ranks share each batch of the prior and the held-out images, and rank 0 writes the report."""
    from vtok.checkpoint import load_tokenizer
    from vtok.eval.__main__ import default_out_dir

    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if device.type == "cuda" and device.index is None:  # one GPU per rank under torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    with process_group("nccl" if device.type == "cuda" else "gloo", cfg.get("collective_timeout_s", 1800)):
        tokenizer, source = load_tokenizer(cfg.ckpt, weights=cfg.weights)
        out = Path(cfg.out) if cfg.out else default_out_dir(Path(str(cfg.ckpt)), Path(cfg.paths.output_dir)
                                                            ).with_name("probe")
        return probe_tokenizer(tokenizer.to(device).eval(), cfg, out, device, {"checkpoint": str(cfg.ckpt),
                                                                               "weights": source})


def probe_tokenizer(tokenizer, cfg: DictConfig, out: Path, device: torch.device, extra: dict | None = None,
                    fid=None) -> dict:
    """Encode ``cfg.data``'s training stream (cached), train the prior ``cfg.probe`` describes (resumable), measure
    the held-out split; writes ``probe_report.json`` and ``samples.png`` into ``out`` and returns the report.
    Held-out images are centre-cropped to ``data.image_size`` whatever ``data.val_crop`` says (one token grid).

    Under several ranks every rank calls this: rank 0 encodes the training tokens, the ranks share the prior's
    batches, each codes its share of the held-out images, and the figures are gathered (rank 0 writes the files).
    ``fid``: a :class:`vtok.eval.fid.FIDMeter` for the generation FID (``None``: Inception from
    ``probe.inception_path`` when ``probe.fid_samples`` > 0)."""
    from hydra.utils import instantiate

    from vtok.data.validation import build_dataset, validation_loader
    from vtok.distributed import barrier, gather_list, rank, rank_share, world_size
    from vtok.eval.fid import FIDMeter

    from .run import (
        build_prior,
        code_images,
        encode_images,
        sample,
        sample_fid,
        summarize,
        train_prior,
        weights_key,
        write_samples,
    )

    if tokenizer.vocab_size is None:
        raise ValueError("this is a continuous tokenizer: the probe models discrete token ids")
    cfg = OmegaConf.merge(cfg, {"data": {"val_crop": "center"}})
    p = cfg.probe
    seed = int(cfg.get("seed", 0))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data.get("prepare") is not None and rank() == 0:
        instantiate(cfg.data.prepare)()
    key = weights_key(tokenizer)
    cache = out / f"train_tokens-{key}-{p.train_images}.pt"
    if rank() == 0 and not cache.exists():
        stream = torch.utils.data.DataLoader(build_dataset(instantiate(cfg.data.train)), batch_size=cfg.data.batch_size,
                                             num_workers=0)
        train, pixels, _ = encode_images(tokenizer, stream, p.train_images, device, "encoding training images")
        torch.save({"sequences": train, "pixels": pixels}, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").replace(cache)
    barrier()  # rank 0 wrote the cache; every rank reads it
    train = torch.load(cache, weights_only=True)["sequences"]
    if cfg.data.get(p.split) is None:
        raise ValueError(f"probe.split={p.split}, but the data config has no data.{p.split}")
    held_out_loader = validation_loader(build_dataset(instantiate(cfg.data[p.split])), cfg.data.val_batch_size, 0)
    share = None if p.eval_images is None else len(rank_share(p.eval_images))
    held_out, held_pixels, held_images = encode_images(tokenizer, held_out_loader, share, device,
                                                       "encoding held-out images")
    length = max(gather_list([max(len(s) for s in [*train, *held_out])]))
    prior = build_prior(tokenizer.vocab_size, length, p.width, p.depth, p.heads, seed, device)
    state = out / f"prior_state-{key}.pt"
    trained = train_prior(prior, train, p.steps, p.batch_size, p.lr, p.warmup_steps, state, p.save_every,
                          seed, device, p.get("max_steps_this_call"))
    positions = [rank() + i * world_size() for i in range(len(held_out))]  # each image's place in the whole split
    figures = summarize(gather_list(code_images(prior, held_out, positions, p.verify_images, device)), held_pixels)
    figures["rate_distortion"] = rate_distortion(tokenizer, held_images, figures, device)
    layout = tuple(tokenizer.encode(held_images[0][None].to(device)).indices.shape[1:])
    if p.get("fid_samples"):
        if fid is None:
            fid = FIDMeter(p.get("inception_path"), device=device, config_key="probe.inception_path")
        figures["sample_fid"] = sample_fid(prior, tokenizer, fid, held_images, p.fid_samples, layout, length,
                                           p.temperature, seed, p.get("sample_batch_size", 64), device)
        figures["sample_fid_samples"] = int(p.fid_samples)
        figures["sample_fid_reference_images"] = figures["images"]
        figures["sample_fid_weights"] = fid.weights
    report = {
        **(extra or {}), "weights_key": key, "probe": OmegaConf.to_container(p, resolve=True),
        "split": p.split, "train_sequences": len(train), "steps_this_call": trained, "ranks": world_size(),
        "prior_parameters": sum(q.numel() for q in prior.parameters()),
        "raw_bits_per_token": tokenizer.bits_per_token,
        "raw_bits_per_pixel": figures["rate_distortion"]["tokenizer"]["raw_bits_per_pixel"],
        **figures,
    }
    report_path = out / "probe_report.json"
    report["report_path"] = str(report_path)
    if rank() != 0:
        return report
    report["samples_path"] = str(write_samples(tokenizer, sample(prior, length, p.samples, p.temperature, seed,
                                                                 device), layout, out / "samples.png"))
    report_path.write_text(json.dumps(report, indent=2))
    rd = figures["rate_distortion"]
    print(f"probe, held-out: {figures['bits_per_token']:.3f} bits per token under the prior "
          f"(raw {tokenizer.bits_per_token:.2f}); {figures['bits_per_pixel_under_prior']:.4f} bpp under the prior, "
          f"{figures['coded_bits_per_pixel']:.4f} bpp coded ({figures['coded_bytes_per_image']:.1f} bytes per image, "
          f"{figures['verified_round_trips']} round trips exact), raw {report['raw_bits_per_pixel']:.4f} bpp")
    print(f"at the tokenizer's {rd['tokenizer']['psnr']:.2f} dB: JPEG needs {rd['jpeg']['bits_per_pixel']:.4f} bpp, "
          f"WebP {rd['webp']['bits_per_pixel']:.4f} bpp")
    if "sample_fid" in figures:
        print(f"generation FID of {figures['sample_fid_samples']} prior samples against {figures['images']} "
              f"held-out images: {figures['sample_fid']:.2f}")
    print(f"probe report: {report_path}\nsamples: {report['samples_path']}")
    return report


def rate_distortion(tokenizer, images: list, figures: dict, device: torch.device) -> dict:
    """The tokenizer's held-out PSNR at its three rates (raw, under the prior, coded), and the rate JPEG and WebP
    (Pillow) need for the same PSNR on each image; per image on each rank's share, gathered."""
    from vtok.distributed import gather_list
    from vtok.eval.baselines import codec_at_psnr
    from vtok.eval.metrics import psnr

    rows = []
    with torch.no_grad():
        for image in images:
            x = image[None].to(device)
            score = float(psnr(tokenizer.decode(tokenizer.encode(x)).clamp(-1, 1), x))
            row = {"psnr": score}
            for codec in ("jpeg", "webp"):
                result = codec_at_psnr([image], [score], codec)
                row[codec] = {"psnr": result.psnr, "bits_per_pixel": result.bits_per_pixel}
            rows.append(row)
    rows = gather_list(rows)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    out = {"tokenizer": {"psnr": mean([r["psnr"] for r in rows]),
                         "raw_bits_per_pixel": tokenizer.num_tokens(int(images[0].shape[-1])) *
                         tokenizer.bits_per_token / (images[0].shape[-1] * images[0].shape[-2]),
                         "bits_per_pixel_under_prior": figures["bits_per_pixel_under_prior"],
                         "coded_bits_per_pixel": figures["coded_bits_per_pixel"]}}
    for codec in ("jpeg", "webp"):
        out[codec] = {"psnr": mean([r[codec]["psnr"] for r in rows]),
                      "bits_per_pixel": mean([r[codec]["bits_per_pixel"] for r in rows]),
                      "setting": "the lowest quality (1..100) reaching the tokenizer's PSNR, per image"}
    return out


def main() -> None:
    import hydra

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hydra.main(config_path=str(config_dir()), config_name="probe", version_base="1.3")(run)()


if __name__ == "__main__":
    sys.exit(main())
