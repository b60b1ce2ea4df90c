"""``data=hf``: a Hugging Face dataset (parquet written here with ``datasets``) as a training stream and a
validation pass, map-style and streaming, with hostile images counted as everywhere else."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vtok.data import HFImages, ImageTransform

from .helpers import write_parquet_split


def _png(seed: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """20 training rows (every fifth image a zero-byte file) in two parquet files, 7 validation rows, captions."""
    root = tmp_path_factory.mktemp("hf")
    train = [b"" if i % 5 == 2 else _png(i) for i in range(20)]
    write_parquet_split(root, "train", train, [[f"photo {i}", f"picture {i}"] for i in range(20)], files=2)
    write_parquet_split(root, "validation", [_png(100 + i) for i in range(7)], [[f"val {i}"] for i in range(7)])
    return root


def _source(root, tmp_path, **kwargs) -> HFImages:
    defaults = {"caption_column": "captions", "captions": True, "transform": ImageTransform(size=16),
                "cache_dir": str(tmp_path / "cache"), "shuffle_buffer": 4, "seed": 3}
    return HFImages(str(root), **{**defaults, **kwargs})


@pytest.mark.parametrize("streaming", [False, True])
def test_training_rows_are_drawn_once_per_epoch_with_captions_and_zero_byte_images_counted(dataset, tmp_path,
                                                                                           streaming):
    source = _source(dataset, tmp_path, streaming=streaming)
    drawn = [s for _, s in zip(range(33), source)]  # two epochs of 16 usable rows, and one more
    keys = [s["key"] for s in drawn]
    assert len(set(keys[:16])) == 16 and sorted(keys[:16]) == sorted(keys[16:32])
    assert all(s["image"].shape == (3, 16, 16) for s in drawn)
    assert {s["caption"].split()[0] for s in drawn} <= {"photo", "picture"}
    # 4 zero-byte rows per epoch (two passed), named as the shard reader names them
    assert set(source.counts) == {"empty"} and 8 <= source.counts["empty"] <= 12


@pytest.mark.parametrize("streaming", [False, True])
def test_two_ranks_read_disjoint_validation_rows_that_cover_the_split(dataset, tmp_path, monkeypatch, streaming):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([s["key"] for s in _source(dataset, tmp_path, split="validation", training=False,
                                                streaming=streaming)])
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 7


@pytest.mark.parametrize("streaming", [False, True])
def test_a_resumed_stream_gives_the_batches_the_uninterrupted_one_would(dataset, tmp_path, streaming):
    source = _source(dataset, tmp_path, streaming=streaming, transform=ImageTransform(size=16))
    for workers in (0, 2):
        full = [b for _, b in zip(range(9), DataLoader(source, batch_size=3, num_workers=workers))]
        for consumed in (4, 5):  # mid-epoch, past unreadable rows; odd: the next batch is the second worker's
            positions: dict[int, int] = {}
            for batch in full[:consumed]:
                positions[int(batch["stream_worker"][0])] = int(batch["stream_position"].max())
            source.resume_after(consumed, 3, positions)
            resumed = [b for _, b in zip(range(3), DataLoader(source, batch_size=3, num_workers=workers))]
            assert [b["key"] for b in resumed] == [b["key"] for b in full[consumed:consumed + 3]]
            assert all(torch.equal(a["image"], b["image"]) for a, b in zip(resumed, full[consumed:], strict=False))
            source.resume_after(0, 1)


def test_hostile_images_are_skipped_and_counted_as_the_shard_reader_counts_them(tmp_path):
    from vtok.data import ShardDataset

    from .test_faults import _hostile_samples

    samples = [(key, members) for key, members, _ in _hostile_samples() if key != "no_image"]
    images = [next(v for k, v in members.items() if k in ("png", "jpg")) for _, members in samples]
    write_parquet_split(tmp_path / "hostile", "validation", images)
    source = _source(tmp_path / "hostile", tmp_path, split="validation", training=False, caption_column=None,
                     captions=False, transform=ImageTransform(size=32, mode="center", flip=False))
    out = list(source)
    shards = ShardDataset(str(_tar(tmp_path, samples)), ImageTransform(size=32, mode="center", flip=False),
                          resampled=False, shuffle_buffer=0)
    from_shards = list(shards)
    assert [s.get("skipped") for s in out] == [s.get("skipped") for s in from_shards]
    assert dict(source.counts) == dict(shards.counts) and source.counts["too_large"] == 1
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(out, from_shards) if "image" in a)


def _tar(tmp_path, samples):
    import webdataset as wds

    path = tmp_path / "hostile.tar"
    with wds.TarWriter(str(path)) as sink:
        for key, members in samples:
            sink.write({"__key__": key, **{k: v for k, v in members.items() if k in ("png", "jpg")}})
    return path


def test_missing_columns_splits_and_an_unreachable_hub_id_name_their_keys(dataset, tmp_path, monkeypatch):
    with pytest.raises(KeyError, match=r"data\.hf\.image_column=picture.*\['image', 'captions'\]"):
        _source(dataset, tmp_path, image_column="picture")
    with pytest.raises(KeyError, match=r"no split named test"):
        _source(dataset, tmp_path, split="test")
    with pytest.raises(KeyError, match=r"data\.hf\.caption_column=text"):
        _source(dataset, tmp_path, caption_column="text", streaming=True)
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network: fail at once, not after retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"data\.hf\.path=nobody/no-such-dataset"):
        _source("nobody/no-such-dataset", tmp_path)
