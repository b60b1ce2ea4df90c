"""Training data throughput against webdataset + PIL + torchvision on the same shards, in one run.

    THP_MEM_ALLOC_ENABLE=1 python bench/data.py [--images DIR] [--batches 30]

The case: 256 px JPEG photos in tar shards -> random-resized 128 px crop (area 0.8-1), flip, tensor in [-1, 1];
batch 64, 2 data-loader workers, resampled shards, a shuffle buffer of 500. vtok's side is ``vtok.data.ShardDataset``
as ``data=webdataset`` configures it; the peer is ``webdataset.WebDataset(...).shuffle().decode("pil")`` with
torchvision's ``RandomResizedCrop`` / ``RandomHorizontalFlip`` / ``ToTensor`` / ``Normalize``. Also a single-process
raw PIL loop (decode + the same crop) as the floor of the work. Images come from ``--images`` (default: the
shared COCO photos when present, else generated gradients), re-encoded once as 256 px JPEG (quality 90).
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

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "train2017"
BATCH, WORKERS, SIZE = 64, 2, 128


def write_shards(src: Path | None, out: Path, count: int = 512) -> str:
    import numpy as np
    from PIL import Image

    from vtok.data.shards import find_images
    from vtok.data.shards import write_shards as write

    sources = find_images(src) if src and src.is_dir() else []
    rng = np.random.default_rng(0)

    def items():
        for i in range(count):
            if sources:
                image = Image.open(sources[i % len(sources)]).convert("RGB")
                image = image.resize((256, 256), Image.BICUBIC)
            else:
                ramp = np.linspace(0, 255, 256)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
                image = Image.fromarray(np.clip(ramp + rng.normal(0, 20, (256, 256, 3)), 0, 255).astype(np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            yield f"{i:06d}", buffer.getvalue(), "jpg", None

    write(items(), out, maxcount=64, progress=False)
    return str(out / "shard-{000000..000007}.tar")


def vtok_loader(urls: str):
    from torch.utils.data import DataLoader

    from vtok.data import ImageTransform, ShardDataset

    dataset = ShardDataset(urls, ImageTransform(size=SIZE, mode="random_resized", scale=(0.8, 1.0), flip=True),
                           resampled=True, shuffle_buffer=500, seed=0)
    return DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True, drop_last=True)


def peer_loader(urls: str):
    import webdataset as wds
    from torch.utils.data import DataLoader
    from torchvision import transforms

    transform = transforms.Compose([transforms.RandomResizedCrop(SIZE, scale=(0.8, 1.0)),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])
    dataset = (wds.WebDataset(urls, resampled=True, shardshuffle=False).shuffle(500).decode("pil")
               .to_tuple("jpg").map_tuple(transform))
    return DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True, drop_last=True)


def images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    for _ in range(3):  # workers started, buffers filled
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def raw_pil(urls: str, images: int = 640) -> float:
    import numpy as np
    from PIL import Image

    from vtok.data import ImageTransform
    from vtok.data.webdataset import expand_urls

    transform = ImageTransform(size=SIZE, mode="random_resized", scale=(0.8, 1.0), flip=True)
    import tarfile

    blobs = []
    for url in expand_urls(urls):
        with tarfile.open(url) as tar:
            blobs += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(images):
        transform(Image.open(io.BytesIO(blobs[i % len(blobs)])).convert("RGB"), rng)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(args.images, Path(tmp))
        results = {"webdataset + PIL + torchvision": [], "vtok": []}
        for _ in range(args.repeats):  # alternate, so both sides see the same machine state
            results["webdataset + PIL + torchvision"].append(images_per_second(peer_loader(urls), args.batches))
            results["vtok"].append(images_per_second(vtok_loader(urls), args.batches))
        floor = raw_pil(urls)
    source = args.images if args.images and args.images.is_dir() else "generated gradients"
    print(f"images: {source}; THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    print("| loader | img/s (median of runs; min-max) |")
    print("|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f}) |")
    peer, ours = (statistics.median(v) for v in results.values())
    print(f"| vtok / peer | {ours / peer:.2f}x |")
    print(f"| raw PIL decode + crop, 1 process | {floor:.0f} |")


if __name__ == "__main__":
    main()
