"""Write an image folder, a COCO caption set or a Hugging Face dataset into WebDataset tar shards.

    vtok-shards src=SRC_DIR out=OUT_DIR maxcount=1000      (or python -m vtok.data.shards ...)
    vtok-shards src=coco/val2017 out=shards/ captions=coco/annotations/captions_val2017.json prefix=val
    vtok-shards src=photos/ out=shards/ resize=512 format=webp quality=90 workers=8
    vtok-shards hf=/data/imagenet-1k hf_split=validation out=shards/ resize=256 resize_mode=center_crop

Originals are copied byte for byte unless ``resize`` or ``format`` asks otherwise; images are prepared in
``workers`` processes and written in input order.

Captions come from a sidecar ``NAME.txt`` next to ``NAME.jpg`` when present, or from a COCO-style annotation
file (``captions=``: ``images`` with ``id`` and ``file_name``, ``annotations`` with ``image_id`` and
``caption``). A sample with captions carries the first as ``txt`` and all of them as ``json``
(``{"captions": [...]}``), from which the reader draws one per visit. Unreadable images are skipped, counted
and listed in the summary.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from vtok.cli import key
from vtok.cli import run as run_command

from .reencode import FORMATS, RESIZE_MODES, ImageRecipe, prepare
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
    bytes: int = 0  # the shards' size on disk
    bytes_in: int = 0  # the images' size as read
    captions: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return (self.written + len(self.skipped)) / max(self.seconds, 1e-9)

    def __str__(self) -> str:
        lines = [
            f"wrote {self.written} images ({self.captions} with captions) into {len(self.shards)} shards: "
            f"{self.bytes_in / 1e6:.1f} MB of images in, {self.bytes / 1e6:.1f} MB of shards out, "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s)",
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
    items: Iterable[tuple[str, bytes | None, str, Caption]],
    out_dir: str | Path,
    prefix: str = "shard",
    maxcount: int = 1000,
    total: int | None = None,
    verify: bool = True,
    progress: bool = True,
    recipe: ImageRecipe | None = None,
    workers: int = 1,
    maxsize: int | None = None,
) -> ShardSummary:
    """Write ``(key, image_bytes, extension, caption)`` items into ``out_dir/prefix-000000.tar``, ...

    Args:
        items: samples; ``extension`` is the image member's suffix without dot (``"png"``); ``caption`` is one
            string, a list of them, or ``None``; image bytes ``None`` (a row without an image) are ``no_image``.
        maxcount: samples per shard at most.
        verify: decode every image first and skip the ones that fail (when no ``recipe`` is given).
        recipe: resize / re-encode settings (:class:`~vtok.data.reencode.ImageRecipe`); ``None`` copies originals.
        workers: processes that check and re-encode images (1: in this process); written in input order.
        maxsize: bytes per shard at most (``None``: only ``maxcount`` cuts shards).
    """
    recipe = recipe or ImageRecipe(verify=verify)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ShardSummary()
    pattern = str(out_dir / f"{prefix}-%06d.tar")
    work = functools.partial(prepare, recipe=recipe)
    listed = ((key, data, ext, [caption] if isinstance(caption, str) else list(caption or []))
              for key, data, ext, caption in items)
    start = time.perf_counter()
    with ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context().Pool(workers))
            prepared = pool.imap(work, listed, chunksize=4)
        else:
            prepared = map(work, listed)
        sink = stack.enter_context(wds.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize or 3e9, verbose=0))
        for item in tqdm(prepared, total=total, desc=f"writing {prefix} shards", unit="img",
                         disable=None if progress else True):
            summary.bytes_in += item.bytes_in
            if item.skipped is not None:
                summary.skipped.append(item.key)
                summary.skipped_kinds[item.skipped] = summary.skipped_kinds.get(item.skipped, 0) + 1
                continue
            sample = {"__key__": item.key, item.extension: item.data}
            if item.captions:
                sample["txt"] = item.captions[0]
                sample["json"] = json.dumps({"captions": item.captions}).encode()
                summary.captions += 1
            sink.write(sample)
            summary.written += 1
    summary.seconds = time.perf_counter() - start
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


def hf_items(path: str, split: str = "train", name: str | None = None, image_column: str = "image",
             caption_column: str | None = None, streaming: bool = False
             ) -> tuple[Iterable[tuple[str, bytes | None, str, Caption]], int | None]:
    """Items for :func:`write_shards` from a Hugging Face dataset's split (the rows in order; the extension is
    guessed from the bytes), and the row count (``None`` when streaming)."""
    from .hf import HFImages

    source = HFImages(path, split=split, name=name, image_column=image_column, caption_column=caption_column,
                      training=False, streaming=streaming)

    def generate():
        for name, data, captions in source.rows():
            yield name, data, _extension(data), captions

    return generate(), source.length


def _extension(data: bytes | None) -> str:
    """The member suffix an image's bytes call for (``png`` for anything unrecognised: the reader decodes by
    content anyway)."""
    if data is None:
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


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

    out: str = key(help="folder for the tar shards")
    src: str | None = key(None, "folder of images (searched recursively; NAME.txt beside an image is its caption)")
    captions: str | None = key(None, "COCO-style caption annotations for src (e.g. captions_train2017.json)")
    hf: str | None = key(None, "a Hugging Face dataset instead of src: hub id, local folder, or parquet file / glob")
    hf_split: str = key("train", "the split of hf to write")
    hf_name: str | None = key(None, "the configuration of hf, if it has several")
    image_column: str = key("image", "hf's image column")
    caption_column: str | None = key(None, "hf's caption column (a caption or a list of captions per row)")
    hf_streaming: bool = key(False, "read hf's parquet files as they come (no local Arrow copy)")
    prefix: str = key("shard", "shard file prefix: PREFIX-000000.tar, ...")
    maxcount: int = key(1000, "images per shard at most")
    maxsize: int | None = key(None, "bytes per shard at most (e.g. 1000000000); null: maxcount alone")
    resize: int | None = key(None, "short side at most this many pixels (aspect kept, never enlarged); null: keep")
    resize_mode: str = key("shorter", f"{' | '.join(RESIZE_MODES)}: center_crop makes resize x resize squares")
    format: str = key("keep", f"{' | '.join(FORMATS)}: keep copies originals unless resized")
    quality: int = key(90, "JPEG / WebP quality when re-encoding")
    workers: int = key(1, "processes that check, resize and re-encode images")
    verify: bool = key(True, "decode every image before writing it (unusable files are skipped and counted)")


def main(argv: list[str] | None = None) -> int:
    return run_command("vtok-shards", __doc__.split("\n\n")[0], ShardsCommand, _shards_command, argv)


def _shards_command(args: ShardsCommand) -> int:
    if (args.src is None) == (args.hf is None):
        print("vtok-shards: give one source: src=FOLDER (with captions=COCO.json) or hf=DATASET", file=sys.stderr)
        return 2
    try:
        recipe = ImageRecipe(args.resize, args.resize_mode, args.format, args.quality, args.verify)
    except ValueError as error:
        print(f"vtok-shards: {error}", file=sys.stderr)
        return 2
    if args.hf is not None:
        items, total = hf_items(args.hf, args.hf_split, args.hf_name, args.image_column, args.caption_column,
                                args.hf_streaming)
        where = f"{args.hf} [{args.hf_split}]"
    else:
        items, total = folder_items(args.src, coco_captions(args.captions) if args.captions else None)
        where = args.src
    if total == 0:
        print(f"vtok-shards: no images found in {where}", file=sys.stderr)
        return 2
    summary = write_shards(items, args.out, prefix=args.prefix, maxcount=args.maxcount, total=total, recipe=recipe,
                           workers=args.workers, maxsize=args.maxsize)
    print(summary)
    return 0 if summary.written else 1


if __name__ == "__main__":
    raise SystemExit(main())
