"""The shard writer's throughput, and ``data=hf`` against the WebDataset reader on the same images, in one run.

    THP_MEM_ALLOC_ENABLE=1 python bench/data_sources.py [--photos DIR] [--coco DIR] [--repeats 3]

1. ``vtok-shards`` on full-size photos (the 49 ~1300 x 860 PNG photos of ``../shared``, then its 80 COCO training JPEGs,
   about ImageNet's size): originals kept
   (each decoded once to check it), resized to a 256 px short side and re-encoded as JPEG 90 or WebP 90; 1 and 2
   worker processes. The peer is the loop a user writes without a tool: PIL open, ``thumbnail``-style bicubic
   resize, JPEG 90, ``webdataset.TarWriter``, one process.
2. Training reads: the COCO photos (or generated gradients) as 256 px JPEGs, 512 rows, written once as WebDataset
   shards (8 x 64) and once as a parquet dataset (``datasets``, 8 files); random-resized 128 px crops + flip, batch
   64, 2 data-loader workers; ``ShardDataset`` against ``HFImages`` map-style and streaming. 20 timed batches after 3.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH, WORKERS, SIZE, ROWS = 64, 2, 128, 512


def writer_runs(photos: Path, out: Path, repeats: int) -> list[tuple[str, float, float]]:
    """``(case, images/s median, bytes out / bytes in)`` for each writer setting and the peer loop."""
    from vtok.data.reencode import ImageRecipe
    from vtok.data.shards import folder_items, write_shards

    cases = [("vtok, originals kept, 1 process", ImageRecipe(), 1),
             ("vtok, originals kept, 2 processes", ImageRecipe(), 2),
             ("vtok, 256 px JPEG 90, 1 process", ImageRecipe(resize=256, format="jpeg"), 1),
             ("vtok, 256 px JPEG 90, 2 processes", ImageRecipe(resize=256, format="jpeg"), 2),
             ("vtok, 256 px WebP 90, 2 processes", ImageRecipe(resize=256, format="webp"), 2)]
    results = []
    for name, recipe, workers in cases:
        rates, ratio = [], 0.0
        for r in range(repeats):
            items, total = folder_items(photos)
            summary = write_shards(items, out / f"w{len(results)}-{r}", total=total, progress=False, recipe=recipe,
                                   workers=workers, maxcount=1000)
            rates.append(summary.images_per_second)
            ratio = summary.bytes / summary.bytes_in
        results.append((name, statistics.median(rates), ratio))
    rates = []
    for r in range(repeats):
        rate, ratio = peer_writer(photos, out / f"peer-{r}.tar")
        rates.append(rate)
    results.append(("peer: PIL resize + JPEG 90 + TarWriter, 1 process", statistics.median(rates), ratio))
    return results


def peer_writer(photos: Path, path: Path) -> tuple[float, float]:
    import webdataset as wds
    from PIL import Image

    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    start, bytes_in = time.perf_counter(), 0
    with wds.TarWriter(str(path)) as sink:
        for file in files:
            data = file.read_bytes()
            bytes_in += len(data)
            image = Image.open(io.BytesIO(data)).convert("RGB")
            scale = 256 / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            sink.write({"__key__": file.stem, "jpg": buffer.getvalue()})
    return len(files) / (time.perf_counter() - start), path.stat().st_size / bytes_in


def training_sets(coco: Path | None, out: Path) -> tuple[str, Path]:
    """512 rows of 256 px JPEG as shards and as a parquet dataset."""
    import numpy as np
    from PIL import Image

    from tests.helpers import write_parquet_split
    from vtok.data.shards import find_images, write_shards

    sources = find_images(coco) if coco and coco.is_dir() else []
    rng = np.random.default_rng(0)
    encoded = []
    for i in range(ROWS):
        if sources:
            image = Image.open(sources[i % len(sources)]).convert("RGB").resize((256, 256), Image.BICUBIC)
        else:
            ramp = np.linspace(0, 255, 256)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
            image = Image.fromarray(np.clip(ramp + rng.normal(0, 20, (256, 256, 3)), 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    write_shards(((f"{i:06d}", data, "jpg", None) for i, data in enumerate(encoded)), out / "shards", maxcount=64,
                 progress=False)
    write_parquet_split(out / "parquet", "train", encoded, files=8)
    return str(out / "shards" / "shard-{000000..000007}.tar"), out / "parquet"


def loader_rate(dataset, batches: int = 20, warmup: int = 3) -> float:
    from torch.utils.data import DataLoader

    loader = iter(DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS))
    for _ in range(warmup):
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * BATCH / (time.perf_counter() - start)


def reader_runs(urls: str, parquet: Path, cache: Path, repeats: int) -> list[tuple[str, float]]:
    from vtok.data import HFImages, ImageTransform, ShardDataset

    def transform():
        return ImageTransform(size=SIZE, mode="random_resized", scale=(0.8, 1.0), reduced_decode=True, flip=True)

    sides = {
        "vtok ShardDataset (data=webdataset)": lambda: ShardDataset(urls, transform(), resampled=True,
                                                                    shuffle_buffer=500),
        "vtok HFImages map-style (data=hf)": lambda: HFImages(str(parquet), transform=transform(),
                                                              cache_dir=str(cache)),
        "vtok HFImages streaming (data=hf, streaming=true)": lambda: HFImages(str(parquet), transform=transform(),
                                                                             streaming=True, shuffle_buffer=500),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):  # alternate the sides, so drift hits each alike
        for name, make in sides.items():
            rates[name].append(loader_rate(make()))
    return [(name, statistics.median(values)) for name, values in rates.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=SHARED / "photos-wiki49")
    parser.add_argument("--coco", type=Path, default=SHARED / "coco-mini" / "train2017")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for folder in (args.photos, args.coco):  # full-size PNG photos; ImageNet-like JPEGs (COCO, ~640 x 480)
            if not folder.is_dir():
                print(f"writer: skipped ({folder} not found)")
                continue
            count = len([p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")])
            print(f"\nwriter: {count} photos from {folder}, median of {args.repeats}")
            print("| writer | images/s | bytes out / in |\n| --- | --- | --- |")
            for name, rate, ratio in writer_runs(folder, out / f"writer-{folder.name}", args.repeats):
                print(f"| {name} | {rate:.1f} | {ratio:.3f} |")
        urls, parquet = training_sets(args.coco, out / "sets")
        print(f"\nreaders: {ROWS} rows of 256 px JPEG, {SIZE} px random-resized crops, batch {BATCH}, {WORKERS} "
              f"workers, median of {args.repeats}")
        print("| reader | images/s | of ShardDataset |\n| --- | --- | --- |")
        results = reader_runs(urls, parquet, out / "hf_cache", args.repeats)
        base = results[0][1]
        for name, rate in results:
            print(f"| {name} | {rate:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
