"""``vtok-shards``: resize, re-encode, parallel workers, shard size by bytes, and Hugging Face datasets as input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from vtok.data.decode import decode_image
from vtok.data.reencode import ImageRecipe
from vtok.data.shards import folder_items, hf_items, main, write_shards

from .helpers import write_parquet_split


def _photo(width: int, height: int, seed: int, format: str = "PNG") -> bytes:
    """Smooth colour ramps with mild texture: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    ramps = np.stack([np.sin(6 * x + c + seed) * np.cos(4 * y - c) for c in (0, 1, 2)], axis=-1)
    pixels = np.clip(127 + 90 * ramps + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i, (w, h) in enumerate([(120, 80), (64, 96), (20, 30)]):
        (root / f"p{i}.png").write_bytes(_photo(w, h, i))
    (root / "p3.jpg").write_bytes(_photo(100, 100, 3, "JPEG"))
    return root


def _members(out, prefix="shard"):
    samples = []
    for path in sorted(out.glob(f"{prefix}-*.tar")):
        samples += list(wds.WebDataset(str(path), shardshuffle=False))
    return {s["__key__"]: s for s in samples}


def _image(sample) -> Image.Image:
    return decode_image(next(sample[k] for k in ("png", "jpg", "webp") if k in sample))


def test_resized_shards_decode_to_the_requested_size_and_originals_are_kept_by_default(folder, tmp_path):
    items, total = folder_items(folder)
    write_shards(items, tmp_path / "kept", total=total, progress=False)
    kept = _members(tmp_path / "kept")
    assert kept["p0"]["png"] == (folder / "p0.png").read_bytes()  # byte for byte
    items, total = folder_items(folder)
    write_shards(items, tmp_path / "short", total=total, progress=False, recipe=ImageRecipe(resize=32))
    sizes = {key: _image(s).size for key, s in _members(tmp_path / "short").items()}
    assert sizes == {"p0": (48, 32), "p1": (32, 48), "p2": (20, 30), "p3": (32, 32)}  # aspect kept, never enlarged
    assert "jpg" in _members(tmp_path / "short")["p3"]  # a resized original keeps its format
    items, total = folder_items(folder)
    write_shards(items, tmp_path / "square", total=total, progress=False,
                 recipe=ImageRecipe(resize=32, resize_mode="center_crop"))
    assert {_image(s).size for s in _members(tmp_path / "square").values()} == {(32, 32)}


def test_re_encoding_shrinks_the_set_and_workers_write_the_same_shards(folder, tmp_path):
    for i in range(8):
        (folder / f"big{i}.png").write_bytes(_photo(160, 120, 10 + i))
    recipe = ImageRecipe(format="webp", quality=80)
    one = write_shards(_items(folder), tmp_path / "one", progress=False, recipe=recipe, maxcount=5)
    two = write_shards(_items(folder), tmp_path / "two", progress=False, recipe=recipe, maxcount=5, workers=2)
    assert one.written == two.written == 12 and len(one.shards) == 3
    def contents(shards):  # members in order (tar headers carry the time of writing)
        return [[(s["__key__"], s["webp"]) for s in wds.WebDataset(p, shardshuffle=False)] for p in shards]

    assert contents(one.shards) == contents(two.shards)  # the same bytes, the same order, the same cuts
    assert one.bytes_in > 3 * one.bytes  # PNG photos -> WebP 80, tar headers included
    assert all("webp" in s for s in _members(tmp_path / "one").values())
    assert "images/s" in str(one) and f"{one.bytes_in / 1e6:.1f} MB of images in" in str(one)


def _items(folder):
    return folder_items(folder)[0]


def test_shards_are_cut_by_bytes(folder, tmp_path):
    summary = write_shards(_items(folder), tmp_path / "out", progress=False, maxsize=20_000)
    assert len(summary.shards) >= 2 and summary.written == 4
    assert all(p.stat().st_size <= 20_000 + 40_000 for p in (tmp_path / "out").glob("*.tar"))  # one image over


def test_a_hugging_face_dataset_is_written_with_its_captions_and_hostile_rows_counted_as_the_reader_counts(
        tmp_path):
    from vtok.data import HFImages, ImageTransform

    from .test_faults import _hostile_samples

    samples = [(key, m) for key, m, _ in _hostile_samples() if key != "no_image"]
    images = [next(v for k, v in members.items() if k in ("png", "jpg")) for _, members in samples]
    write_parquet_split(tmp_path / "hf", "train", images, [[f"caption {i}", "another"] for i in range(len(images))])
    items, total = hf_items(str(tmp_path / "hf"), caption_column="captions")
    summary = write_shards(items, tmp_path / "out", total=total, progress=False, workers=2)
    reader = HFImages(str(tmp_path / "hf"), caption_column="captions", training=False,
                      transform=ImageTransform(size=16, mode="center"))
    list(reader)
    assert summary.skipped_kinds == dict(reader.counts) and summary.written == len(images) - sum(reader.counts.values())
    written = _members(tmp_path / "out")
    assert written["00000000"]["txt"] == b"caption 0" and b"another" in written["00000000"]["json"]
    assert written["00000001"]["jpg"] == images[1]  # JPEG bytes kept, named by their content


def test_the_command_writes_a_hugging_face_split_resized(tmp_path, capsys):
    write_parquet_split(tmp_path / "hf", "validation", [_photo(90, 60, i) for i in range(5)])
    assert main([f"hf={tmp_path / 'hf'}", "hf_split=validation", f"out={tmp_path / 'out'}", "resize=24",
                 "format=jpeg", "quality=85", "workers=2", "prefix=val"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert {_image(s).size for s in _members(tmp_path / "out", "val").values()} == {(36, 24)}
    assert main([f"out={tmp_path / 'x'}"]) == 2  # no source
    assert main([f"src={tmp_path}", f"out={tmp_path / 'x'}", "format=gif"]) == 2
