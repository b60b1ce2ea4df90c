"""``python -m vtok.llm.caption ckpt=PATH images=[a.jpg,b.png] [max_new_tokens=40] [weights=live]``

Prints what a tuned LLM says about images: ``ckpt`` is an ETT run's checkpoint (``.ckpt``) or a folder exported
with ``vtok-export`` (tokenizer + ``llm_bridge/``). Images are resized and centre-cropped to the tokenizer's size.
An entry point (the top layer): it reads images with the data pipeline's transform.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vtok.cli import key
from vtok.cli import run as run_command
from vtok.data.transforms import ImageTransform
from vtok.tokenizers import Tokenizer

from .bridge import ImageToText
from .export import load_with_bridge


def load(source: str, weights: str = "live") -> tuple[Tokenizer, ImageToText, str]:
    """``(tokenizer, bridge, feature)`` from an ETT checkpoint or an exported folder.

    Raises:
        ValueError: no LLM caption term there (or an image vocabulary in its place).
    """
    tokenizer, bridge, record = load_with_bridge(source, "llm_caption", weights)
    if not isinstance(bridge, ImageToText):
        raise ValueError(f"{source}'s LLM bridge is an image vocabulary: caption with python -m vtok.llm.generate")
    return tokenizer, bridge, record["feature"]


@torch.no_grad()
def caption(tokenizer: Tokenizer, bridge: ImageToText, feature: str, images: torch.Tensor,
            max_new_tokens: int = 40) -> list[str]:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> one caption each."""
    tokens = tokenizer.encode(images)
    which = feature.split(".", 1)[1] if "." in feature else None
    codes = tokenizer.embed(tokens.indices, which) if tokens.indices is not None else tokens.latents
    return bridge.generate(codes.flatten(1, -2), max_new_tokens=max_new_tokens)


@dataclass
class CaptionCommand:
    """The keys of ``python -m vtok.llm.caption``."""

    ckpt: str = key(help="an ETT run's checkpoint (.ckpt) or a folder exported with vtok-export")
    images: list[str] = key(help="image files to caption, e.g. images=[a.jpg,b.png] (one: images=[a.jpg])")
    max_new_tokens: int = key(40, "longest caption, in LLM tokens")
    weights: str = key("live", "live or ema tokenizer weights (a checkpoint's); ETT trains the live ones")


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m vtok.llm.caption", "Print what a tuned LLM says about images.", CaptionCommand,
                       _caption_command, argv)


def _caption_command(args: CaptionCommand) -> int:
    if not args.images:
        print("give at least one image: images=[PATH]", file=sys.stderr)
        return 2
    tokenizer, bridge, feature = load(args.ckpt, args.weights)
    size = tokenizer.fixed_size or tokenizer.image_size
    transform = ImageTransform(size=size, mode="center", flip=False)
    for path in args.images:
        image = transform(Image.open(path).convert("RGB"), np.random.default_rng(0))[None]
        print(f"{path}: {caption(tokenizer, bridge, feature, image, args.max_new_tokens)[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
