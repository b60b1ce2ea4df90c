"""``python -m vtok.llm.generate ckpt=PATH prompt="a red bus" [samples=4] [temperature=1.0] [top_k=null] [seed=0]``

Asks an LLM that learned the tokenizer's codes as vocabulary (``experiment=llm_vocabulary``) to write image tokens
for a caption, and decodes them with the tokenizer into one picture of ``samples`` images. ``ckpt``: the run's
checkpoint (``.ckpt``) or a folder exported with ``vtok-export`` (tokenizer + ``llm_bridge/``). The picture goes
to ``out`` (default: the run folder's ``generated/``, or ``outputs/generated/`` for an exported folder).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vtok.cli import key
from vtok.cli import run as run_command
from vtok.images import image_grid
from vtok.tokenizers import Tokenizer

from .export import load_with_bridge
from .vocabulary import ImageVocabulary


def load(source: str, weights: str = "ema") -> tuple[Tokenizer, ImageVocabulary]:
    """The tokenizer and the image vocabulary of a run's checkpoint or an exported folder.

    Raises:
        ValueError: the checkpoint or folder holds no image vocabulary.
    """
    tokenizer, vocabulary, _ = load_with_bridge(source, "llm_vocabulary", weights)
    if not isinstance(vocabulary, ImageVocabulary):
        raise ValueError(f"{source}'s LLM bridge reads code embeddings (ETT) and writes no image ids: nothing to "
                         "draw")
    return tokenizer.eval(), vocabulary.eval()


@torch.no_grad()
def generate(tokenizer: Tokenizer, vocabulary: ImageVocabulary, prompt: str, samples: int = 4,
             temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """``samples`` images ``(samples, 3, H, W)`` drawn for ``prompt`` (sample ``i`` from seed ``seed + i``), and
    each one's token count. Tokenizers that decode any prefix (flexible, dynamic length) let the LLM end an image
    early; the others get exactly their token count."""
    size = tokenizer.fixed_size or tokenizer.image_size
    device = next(tokenizer.parameters()).device
    shape = tokenizer.encode(torch.zeros(1, 3, size, size, device=device)).indices.shape[1:]
    count = shape.numel()
    images, lengths = [], []
    for i in range(samples):
        codes = vocabulary.generate_codes(prompt, count, temperature, top_k, seed + i, stop=tokenizer.flexible)
        lengths.append(len(codes))
        ids = torch.zeros(count, dtype=torch.long)
        ids[: len(codes)] = codes.clamp(0, tokenizer.vocab_size - 1)
        kept = torch.tensor([len(codes)], device=device) if tokenizer.flexible else None
        images.append(tokenizer.decode_indices(ids.view(1, *shape).to(device), lengths=kept).clamp(-1, 1))
    return torch.cat(images), lengths


@dataclass
class GenerateCommand:
    """The keys of ``python -m vtok.llm.generate``."""

    ckpt: str = key(help="an llm_vocabulary run's checkpoint (.ckpt) or a folder exported with vtok-export")
    prompt: str = key(help="the caption to draw")
    samples: int = key(4, "images to draw (sample i from seed + i)")
    temperature: float = key(1.0, "sampling temperature over the code ids")
    top_k: int | None = key(None, "draw from the k most likely codes only (null: all)")
    seed: int = key(0, "seed of the first sample")
    weights: str = key("ema", "ema or live tokenizer weights (a checkpoint's)")
    out: str | None = key(None, "the picture's path (null: RUN/generated/PROMPT.png or outputs/generated/PROMPT.png)")


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m vtok.llm.generate", "Draw images for a caption with an LLM that learned the "
                       "tokenizer's codes.", GenerateCommand, _generate_command, argv)


def _generate_command(args: GenerateCommand) -> int:
    if not args.prompt.strip():
        print("give a caption: prompt=\"...\"", file=sys.stderr)
        return 2
    tokenizer, vocabulary = load(args.ckpt, args.weights)
    images, lengths = generate(tokenizer, vocabulary, args.prompt, args.samples, args.temperature, args.top_k,
                               args.seed)
    slug = re.sub(r"[^a-z0-9]+", "_", args.prompt.lower()).strip("_")[:60] or "prompt"
    ckpt = Path(args.ckpt)
    folder = ckpt.parent.parent if ckpt.suffix == ".ckpt" else Path("outputs")
    out = Path(args.out) if args.out else folder / "generated" / f"{slug}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(out)
    print(f"{args.samples} images for {args.prompt!r} ({', '.join(map(str, lengths))} tokens): {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
