"""Write an image folder into WebDataset tar shards.

    vtok-shards src=SRC_DIR out=OUT_DIR maxcount=1000      (or python -m vtok.data.shards ...)
    vtok-shards src=coco/val2017 out=shards/ captions=coco/annotations/captions_val2017.json prefix=val

Captions come from a sidecar ``NAME.txt`` next to ``NAME.jpg`` when present, or from a COCO-style annotation
file (``captions=``: ``images`` with ``id`` and ``file_name``, ``annotations`` with ``image_id`` and
``caption``). A sample with captions carries the first as ``txt`` and all of them as ``json``
(``{"captions": [...]}``), from which the reader draws one per visit. Unreadable images are skipped, counted
and listed in the summary.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from vtok.cli import key
from vtok.cli import run as run_command

from .decode import BadImage, decode_image
from .transforms import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass
class ShardSummary:
    """What a shard-writing run did."""

    written: int = 0
    skipped: list[str] = field(default_factory=list)
    skipped_kinds: dict[str, int] = field(default_factory=dict)  # BadImage kinds: undecodable, too_small, ...
    caption_problems: dict[str, int] = field(default_factory=dict)  # caption_not_utf8
    shards: list[str] = field(default_factory=list)
    bytes: int = 0
    captions: int = 0

    def __str__(self) -> str:
        lines = [
            f"wrote {self.written} images ({self.captions} with captions) into {len(self.shards)} shards, "
            f"{self.bytes / 1e6:.1f} MB",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unusable files {self.skipped_kinds}: "
                         + ", ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
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


Caption = str | list[str] | None


def write_shards(
    items: Iterable[tuple[str, bytes, str, Caption]],
    out_dir: str | Path,
    prefix: str = "shard",
    maxcount: int = 1000,
    total: int | None = None,
    verify: bool = True,
    progress: bool = True,
) -> ShardSummary:
    """Write ``(key, image_bytes, extension, caption)`` items into ``out_dir/prefix-000000.tar``, ...

    Args:
        items: samples; ``extension`` is the image member's suffix without dot (``"png"``); ``caption`` is one
            string, a list of them, or ``None``.
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
                except BadImage as error:
                    summary.skipped.append(key)
                    summary.skipped_kinds[error.kind] = summary.skipped_kinds.get(error.kind, 0) + 1
                    continue
            sample = {"__key__": key, ext: data}
            captions = [caption] if isinstance(caption, str) else list(caption or [])
            if captions:
                sample["txt"] = captions[0]
                sample["json"] = json.dumps({"captions": captions}).encode()
                summary.captions += 1
            sink.write(sample)
            summary.written += 1
    summary.shards = sorted(str(p) for p in out_dir.glob(f"{prefix}-*.tar"))
    summary.bytes = sum(os.path.getsize(p) for p in summary.shards)
    return summary


def coco_captions(annotation_file: str | Path) -> dict[str, list[str]]:
    """``{file name: [captions]}`` from a COCO-style caption annotation file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a COCO caption file (names the missing field).
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    data = json.loads(path.read_text())
    for field_name in ("images", "annotations"):
        if field_name not in data:
            raise ValueError(f"{path} is not a COCO caption file: it has no {field_name!r} list")
    names = {image["id"]: image["file_name"] for image in data["images"]}
    captions: dict[str, list[str]] = {}
    for note in data["annotations"]:
        if note.get("image_id") in names and note.get("caption"):
            captions.setdefault(names[note["image_id"]], []).append(note["caption"].strip())
    return captions


def folder_items(src: str | Path, captions: dict[str, list[str]] | None = None
                 ) -> tuple[Iterable[tuple[str, bytes, str, Caption]], int]:
    """Items for :func:`write_shards` from an image folder, with sidecar ``.txt`` captions or ``captions``
    (``{file name: [captions]}``, e.g. from :func:`coco_captions`)."""
    paths = find_images(src)

    def generate():
        for path in paths:
            caption_path = path.with_suffix(".txt")
            caption: Caption = _read_caption(caption_path) if caption_path.exists() else None
            if captions is not None:
                caption = captions.get(path.name) or caption
            key = str(path.relative_to(src).with_suffix("")).replace(os.sep, "__").replace(".", "_")
            yield key, path.read_bytes(), path.suffix.lower().lstrip("."), caption

    return generate(), len(paths)


def _read_caption(path: Path) -> str:
    """A sidecar caption as text; bytes that are not UTF-8 are replaced (and the log says which file)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8: undecodable bytes replaced", path)
        return data.decode("utf-8", errors="replace").strip()


@dataclass
class ShardsCommand:
    """The keys of ``vtok-shards``."""

    src: str = key(help="folder of images (searched recursively; NAME.txt beside an image is its caption)")
    out: str = key(help="folder for the tar shards")
    prefix: str = key("shard", "shard file prefix: PREFIX-000000.tar, ...")
    maxcount: int = key(1000, "images per shard")
    captions: str | None = key(None, "COCO-style caption annotations (e.g. captions_train2017.json)")
    verify: bool = key(True, "decode every image before writing it (unusable files are skipped and counted)")


def main(argv: list[str] | None = None) -> int:
    return run_command("vtok-shards", __doc__.split("\n\n")[0], ShardsCommand, _shards_command, argv)


def _shards_command(args: ShardsCommand) -> int:
    items, total = folder_items(args.src, coco_captions(args.captions) if args.captions else None)
    if total == 0:
        print(f"vtok-shards: no images found under {args.src}", file=sys.stderr)
        return 2
    print(write_shards(items, args.out, prefix=args.prefix, maxcount=args.maxcount, total=total,
                       verify=args.verify))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
