"""``python -m vtok.llm.caption ckpt=PATH image=PATH [image=PATH ...] [max_new_tokens=40] [weights=live]``

Prints what a tuned LLM says about images: ``ckpt`` is an ETT run's checkpoint (``.ckpt``) or a folder exported
with ``vtok-export`` (tokenizer + ``llm_bridge/``). Images are resized and centre-cropped to the tokenizer's size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vtok.checkpoint import load_tokenizer, read_checkpoint, tokenizer_from_checkpoint
from vtok.data.transforms import ImageTransform
from vtok.tokenizers import Tokenizer

from .bridge import ImageToText
from .export import bridge_from_checkpoint, build_bridge, load_bridge

USAGE = __doc__.split("\n\n")[0].strip("`")


def load(source: str, weights: str = "live") -> tuple[Tokenizer, ImageToText, str]:
    """``(tokenizer, bridge, feature)`` from an ETT checkpoint or an exported folder.

    Raises:
        ValueError: the checkpoint has no LLM caption term.
    """
    path = Path(source)
    if path.suffix == ".ckpt":
        checkpoint = read_checkpoint(path)
        tokenizer = tokenizer_from_checkpoint(checkpoint, weights)[0]
        found = bridge_from_checkpoint(checkpoint)
        if found is None:
            raise ValueError(f"{path} is not an ETT checkpoint: it holds no LLM caption term")
        record, state = found
        return tokenizer, build_bridge(record, state), record["feature"]
    tokenizer = load_tokenizer(path, weights=weights)[0]
    bridge, record = load_bridge(path)
    return tokenizer, bridge, record["feature"]


@torch.no_grad()
def caption(tokenizer: Tokenizer, bridge: ImageToText, feature: str, images: torch.Tensor,
            max_new_tokens: int = 40) -> list[str]:
    """``(B, 3, H, W)`` images in ``[-1, 1]`` -> one caption each."""
    tokens = tokenizer.encode(images)
    which = feature.split(".", 1)[1] if "." in feature else None
    codes = tokenizer.embed(tokens.indices, which) if tokens.indices is not None else tokens.latents
    return bridge.generate(codes.flatten(1, -2), max_new_tokens=max_new_tokens)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args) or not any(a.startswith("ckpt=") for a in args):
        print(__doc__)
        return 0 if args else 2
    options = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("image="))
    paths = [a.split("=", 1)[1] for a in args if a.startswith("image=")]
    if not paths:
        print("give at least one image=PATH", file=sys.stderr)
        return 2
    tokenizer, bridge, feature = load(options["ckpt"], options.get("weights", "live"))
    size = tokenizer.fixed_size or tokenizer.image_size
    transform = ImageTransform(size=size, mode="center", flip=False)
    for path in paths:
        image = transform(Image.open(path).convert("RGB"), np.random.default_rng(0))[None]
        print(f"{path}: {caption(tokenizer, bridge, feature, image, int(options.get('max_new_tokens', 40)))[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
