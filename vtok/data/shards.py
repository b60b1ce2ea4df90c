"""Write an image folder into WebDataset tar shards.

    python -m vtok.data.shards SRC_DIR OUT_DIR --maxcount 1000

Captions come from a sidecar ``NAME.txt`` next to ``NAME.jpg`` when present. Unreadable images are skipped,
counted and listed in the summary.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from .transforms import IMAGE_EXTENSIONS, BadImage, decode_image


@dataclass
class ShardSummary:
    """What a shard-writing run did."""

    written: int = 0
    skipped: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    bytes: int = 0
    captions: int = 0

    def __str__(self) -> str:
        lines = [
            f"wrote {self.written} images ({self.captions} with captions) into {len(self.shards)} shards, "
            f"{self.bytes / 1e6:.1f} MB",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable files: " + ", ".join(self.skipped[:10])
                         + (" ..." if len(self.skipped) > 10 else ""))
        return "\n".join(lines)


def find_images(src: str | Path) -> list[Path]:
    """Image files under ``src`` (recursively), sorted.

    Raises:
        FileNotFoundError: ``src`` does not exist.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"image folder not found: {src}")
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def write_shards(
    items: Iterable[tuple[str, bytes, str, str | None]],
    out_dir: str | Path,
    prefix: str = "shard",
    maxcount: int = 1000,
    total: int | None = None,
    verify: bool = True,
    progress: bool = True,
) -> ShardSummary:
    """Write ``(key, image_bytes, extension, caption)`` items into ``out_dir/prefix-000000.tar``, ...

    Args:
        items: samples; ``extension`` is the image member's suffix without dot (``"png"``).
        maxcount: samples per shard.
        verify: decode every image first and skip the ones that fail.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ShardSummary()
    pattern = str(out_dir / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for key, data, ext, caption in tqdm(items, total=total, desc=f"writing {prefix} shards",
                                            unit="img", disable=None if progress else True):
            if verify:
                try:
                    decode_image(data)
                except BadImage:
                    summary.skipped.append(key)
                    continue
            sample = {"__key__": key, ext: data}
            if caption is not None:
                sample["txt"] = caption
                summary.captions += 1
            sink.write(sample)
            summary.written += 1
    summary.shards = sorted(str(p) for p in out_dir.glob(f"{prefix}-*.tar"))
    summary.bytes = sum(os.path.getsize(p) for p in summary.shards)
    return summary


def folder_items(src: str | Path) -> tuple[list[tuple[str, bytes, str, str | None]], int]:
    """Items for :func:`write_shards` from an image folder, with sidecar ``.txt`` captions."""
    paths = find_images(src)

    def generate():
        for path in paths:
            caption_path = path.with_suffix(".txt")
            caption = caption_path.read_text().strip() if caption_path.exists() else None
            key = str(path.relative_to(src).with_suffix("")).replace(os.sep, "__").replace(".", "_")
            yield key, path.read_bytes(), path.suffix.lower().lstrip("."), caption

    return generate(), len(paths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vtok.data.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder of images (searched recursively)")
    parser.add_argument("out", help="folder for the tar shards")
    parser.add_argument("--maxcount", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--prefix", default="shard", help="shard file prefix (default 'shard')")
    parser.add_argument("--no-verify", action="store_true", help="do not decode images before writing")
    args = parser.parse_args(argv)
    items, total = folder_items(args.src)
    if total == 0:
        parser.error(f"no images found under {args.src}")
    summary = write_shards(items, args.out, prefix=args.prefix, maxcount=args.maxcount, total=total,
                           verify=not args.no_verify)
    print(summary)


if __name__ == "__main__":
    main()
