"""``vtok-import src=PATH out=DIR [format=auto] [image_size=256]``: a published tokenizer as a vtok folder.

The folder is what ``vtok-export`` writes (``model.safetensors``, ``config.json``, a model card naming the source
and what was dropped): ``Tokenizer.from_pretrained``, ``python -m vtok.eval ckpt=DIR``, ``vtok-export ckpt=DIR
format=diffusers`` and fine-tuning with ``init.tokenizer=DIR`` all read it. Formats: :mod:`vtok.published`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtok.cli import key
from vtok.cli import run as run_command
from vtok.hub import export
from vtok.published import FORMATS, from_published


@dataclass
class ImportCommand:
    """The keys of ``vtok-import``."""

    src: str = key(help="a diffusers folder (AutoencoderKL / VQModel, or a pipeline with vae/), a TiTok folder, or "
                        "an LDM / Stable Diffusion / taming / IBQ / Open-MAGVIT2 / LlamaGen checkpoint file")
    out: str = key(help="the vtok folder to write")
    format: str = key("auto", f"auto or one of {list(FORMATS)} (auto: a folder is titok when its config.json has "
                              "model.vq_model, else diffusers; a file is told apart by its names)")
    image_size: int | None = key(None, "the tokenizer's image size for checkpoints that do not record it (ldm, "
                                       "taming; default 256): their attention resolutions are read at this size")
    name: str | None = key(None, "model name in the card (default: the folder name)")
    weights: str = key("ema", "ema or model: which of a LlamaGen checkpoint's weights (ema falls back to model)")


def main(argv: list[str] | None = None) -> int:
    return run_command("vtok-import", "Read a published tokenizer (diffusers, LDM / Stable Diffusion, taming VQGAN, "
                       "LlamaGen, Open-MAGVIT2, TiTok) into vtok and write it as a vtok folder.", ImportCommand,
                       _import_command, argv)


def _import_command(args: ImportCommand) -> int:
    tokenizer, record = from_published(args.src, format=args.format, image_size=args.image_size,
                                       weights=args.weights)
    out = export(tokenizer, args.out, name=args.name, source=record.describe())
    params = sum(p.numel() for p in tokenizer.parameters())
    print(f"imported {record.describe()}\n{params / 1e6:.2f} M parameters; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
