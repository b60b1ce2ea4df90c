import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vtok.data import ImageFolder, ImageTransform, RandomSampleStream, ShardDataset, SyntheticCaptions
from vtok.data.shards import folder_items, write_shards
from vtok.data.shards import main as shards_main


def _png(color, size=(40, 36)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(6):
        (src / f"img{i}.png").write_bytes(_png((40 * i, 10, 200)))
    (src / "sub" / "captioned.png").write_bytes(_png((1, 2, 3)))
    (src / "sub" / "captioned.txt").write_text("a dark square\n")
    (src / "empty.jpg").write_bytes(b"")  # zero bytes
    (src / "truncated.png").write_bytes(_png((9, 9, 9))[:60])  # cut mid-file
    return src


def test_shard_writer_reader_round_trip_with_corrupt_files(image_folder, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shards_main([f"src={image_folder}", f"out={out}", "maxcount=3"]) == 0
    summary = capsys.readouterr().out
    assert "wrote 7 images (1 with captions) into 3 shards" in summary
    assert "skipped 2 unusable files {'empty': 1, 'undecodable': 1}: empty, truncated" in summary

    dataset = ShardDataset(str(out / "shard-{000000..000002}.tar"), ImageTransform(mode="full", multiple=4,
                           flip=False), resampled=False, shuffle_buffer=0, captions=True)
    samples = list(dataset)
    assert len(samples) == 7
    by_key = {s["key"]: s for s in samples}
    assert by_key["sub__captioned"]["caption"] == "a dark square"
    assert by_key["img0"]["caption"] == ""
    assert by_key["img0"]["image"].shape == (3, 36, 40)
    # exact pixels survive (PNG is lossless): colour (0, 10, 200) in [-1, 1]
    expected = torch.tensor([0, 10, 200]).float() / 127.5 - 1
    assert torch.allclose(by_key["img0"]["image"][:, 0, 0], expected)


def test_reader_skips_and_counts_corrupt_members(tmp_path, caplog):
    items = [("good0", _png((1, 1, 1)), "png", None), ("bad", b"not an image", "png", None),
             ("good1", _png((2, 2, 2)), "png", None)]
    write_shards(items, tmp_path, verify=False, progress=False)
    dataset = ShardDataset(str(tmp_path / "shard-000000.tar"), ImageTransform(size=16, mode="center"),
                           resampled=False, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        keys = [s["key"] for s in dataset if "image" in s]  # one pass (evaluation): the bad one comes as a marker
    assert keys == ["good0", "good1"]
    assert dataset.counts == {"undecodable": 1}
    assert "skipped sample bad" in caplog.text and "{'undecodable': 1}" in caplog.text


def test_missing_and_empty_paths_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"shard not found: .*nope-000000\.tar"):
        ShardDataset(str(tmp_path / "nope-{000000..000001}.tar"))
    with pytest.raises(FileNotFoundError, match="no shards match"):
        ShardDataset(str(tmp_path / "*.tar"))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert shards_main([f"src={tmp_path / 'empty'}", f"out={tmp_path / 'out'}"]) == 2


def _stream_shards(tmp_path, n=40):
    items = [(f"k{i:03d}", _png((i, 0, 0), (20, 20)), "png", f"caption {i}") for i in range(n)]
    write_shards(items, tmp_path, maxcount=10, progress=False)
    return str(tmp_path / "shard-{000000..000003}.tar")


def test_resampled_stream_differs_per_rank_and_worker(tmp_path, monkeypatch):
    urls = _stream_shards(tmp_path)

    def first_keys(rank: int, workers: int) -> list[str]:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = ShardDataset(urls, ImageTransform(size=16), resampled=True, shuffle_buffer=8, seed=3)
        loader = DataLoader(ds, batch_size=4, num_workers=workers)
        keys = []
        for i, batch in enumerate(loader):
            keys += batch["key"]
            if i == 3:
                break
        return keys

    rank0, rank1 = first_keys(0, 0), first_keys(1, 0)
    assert rank0 != rank1
    assert first_keys(0, 0) == rank0  # deterministic
    two_workers = first_keys(0, 2)
    assert two_workers[:4] != two_workers[4:8]  # the two workers read different samples


def test_small_shards_are_read_once_and_replayed_identically(tmp_path, monkeypatch):
    import vtok.data.webdataset as wds_module

    urls = _stream_shards(tmp_path)  # 4 shards of 10 samples
    opened = []
    real_reader = wds_module.tar_members

    def counting_reader(url):
        opened.append(url)
        return real_reader(url)

    monkeypatch.setattr(wds_module, "tar_members", counting_reader)

    def stream(decode_cache: int) -> tuple[list[str], list[torch.Tensor]]:
        opened.clear()
        ds = ShardDataset(urls, ImageTransform(size=16), resampled=True, shuffle_buffer=8, seed=5,
                          decode_cache=decode_cache)
        samples = [s for _, s in zip(range(150), ds)]
        return [s["key"] for s in samples], [s["image"] for s in samples]

    keys, images = stream(0)
    visits = len(opened)
    assert visits >= 15  # 150 samples from 10-sample shards
    cached_keys, cached_images = stream(10)
    assert cached_keys == keys and all(torch.equal(a, b) for a, b in zip(images, cached_images))
    assert len(opened) == len(set(opened)) <= 4  # each shard read from disk once
    stream(5)  # shards larger than the cache are read on every visit
    assert len(opened) == visits


def test_resume_skips_exactly_the_consumed_batches(tmp_path):
    urls = _stream_shards(tmp_path)
    for workers in (0, 2):
        for consumed in (4, 5):  # an odd count: the resumed loader starts at worker 0, the next batch is worker 1's
            ds = ShardDataset(urls, ImageTransform(size=16), resampled=True, shuffle_buffer=8, seed=1)
            full = [b["image"] for _, b in zip(range(8), DataLoader(ds, batch_size=3, num_workers=workers))]
            ds.resume_after(consumed, 3)
            resumed = [b["image"] for _, b in zip(range(3), DataLoader(ds, batch_size=3, num_workers=workers))]
            for a, b in zip(full[consumed:], resumed, strict=False):
                assert torch.equal(a, b)


def test_resume_is_exact_after_skipped_unreadable_samples(tmp_path):
    # every fourth sample is unreadable: counting batches x batch size would land before the true position
    items = [(f"k{i:03d}", b"" if i % 4 == 1 else _png((i, 0, 0), (20, 20)), "png", "") for i in range(40)]
    write_shards(items, tmp_path, maxcount=10, verify=False, progress=False)
    urls = str(tmp_path / "shard-{000000..000003}.tar")
    for workers in (0, 2):
        ds = ShardDataset(urls, ImageTransform(size=16), resampled=True, shuffle_buffer=8, seed=1)
        full = list(zip(range(9), DataLoader(ds, batch_size=3, num_workers=workers)))
        full = [batch for _, batch in full]
        for consumed in (4, 5):
            positions: dict[int, int] = {}  # what the data module records from the batches it trained
            for batch in full[:consumed]:
                positions[int(batch["stream_worker"][0])] = int(batch["stream_position"].max())
            ds.resume_after(consumed, 3, positions)
            resumed = [b for _, b in zip(range(3), DataLoader(ds, batch_size=3, num_workers=workers))]
            assert [b["key"] for b in resumed] == [b["key"] for b in full[consumed:consumed + 3]]
            assert all(torch.equal(a["image"], b["image"]) for a, b in zip(resumed, full[consumed:], strict=False))


def test_non_resampled_split_by_rank_covers_everything_once(tmp_path, monkeypatch):
    urls = _stream_shards(tmp_path)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = ShardDataset(urls, ImageTransform(size=16), resampled=False, shuffle_buffer=0)
        seen.append({s["key"] for s in ds})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 40


def test_transforms_shapes_and_randomness():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    rng = np.random.default_rng(0)
    for mode in ("random", "random_resized", "center"):
        assert ImageTransform(size=24, mode=mode)(image, rng).shape == (3, 24, 24)
    assert ImageTransform(mode="full", multiple=16)(image, rng).shape == (3, 48, 64)
    a = ImageTransform(size=24)(image, np.random.default_rng(5))
    b = ImageTransform(size=24)(image, np.random.default_rng(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown crop mode"):
        ImageTransform(mode="zoom")


def _photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG: smooth colour ramps with texture, so resampling differences show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    ramps = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in (0, 1, 2)], axis=-1)
    pixels = np.clip(127 + 90 * ramps + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_jpeg_pixels_and_resizes_match_pil():
    from vtok.data import decode_image, decode_pixels

    data = _photo_jpeg(300, 200)
    pil = decode_image(data)
    reference = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    # libjpeg-turbo on both sides (torchvision's and Pillow's builds): at most rounding apart.
    assert (decode_pixels(data).float() - reference).abs().max() <= 2
    view = ImageTransform(size=64, mode="center", flip=False).load(data, np.random.default_rng(0))
    expected = pil.resize((64, 64), Image.BICUBIC, box=(50, 0, 250, 200))
    expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 127.5 - 1
    levels = (view - expected).abs() * 127.5
    assert view.is_contiguous() and levels.mean() < 0.2 and levels.max() <= 8  # 8-bit fixed-point weights


def test_reduced_jpeg_decode_keeps_the_crop_box_of_the_seed():
    from vtok.data import decode_pixels

    data = _photo_jpeg(640, 480)
    whole = ImageTransform(size=96, mode="random_resized", scale=(0.8, 1.0), reduced_decode=False)
    reduced = ImageTransform(size=96, mode="random_resized", scale=(0.8, 1.0), reduced_decode=True)
    plans = [t.plan(640, 480, np.random.default_rng(7)) for t in (whole, reduced)]
    assert plans[0] == plans[1] and plans[0].reduction() == 4  # a crop of >= 384 px kept, 96 px out
    assert decode_pixels(data, reduce=4).shape == (3, 120, 160)
    a, b = (t.load(data, np.random.default_rng(7)) for t in (whole, reduced))
    assert a.shape == b.shape == (3, 96, 96)
    assert 0 < ((a - b).abs() * 127.5).mean() < 6  # the same region, filtered by the DCT instead of bicubic
    small = ImageTransform(size=96, mode="random_resized", scale=(0.8, 1.0), reduced_decode=True)
    assert small.plan(150, 120, np.random.default_rng(7)).reduction() == 1  # never decoded below the output


def test_a_truncated_jpeg_is_undecodable():
    from vtok.data import BadImage, decode_pixels

    with pytest.raises(BadImage) as error:
        decode_pixels(_photo_jpeg(200, 100)[:900])
    assert error.value.kind == "undecodable"


def test_synthetic_dataset_and_folder(tmp_path, image_folder):
    ds = SyntheticCaptions(length=5, size=16)
    sample = ds[3]
    assert sample["image"].shape == (3, 16, 16) and sample["image"].min() >= -1 and sample["image"].max() <= 1
    assert sample["caption"].startswith("a ") and " on a " in sample["caption"]
    assert len(list(ds)) == 5
    folder = ImageFolder(str(image_folder), ImageTransform(size=16, mode="center"), captions=True)
    assert len(folder) == 9
    samples = [folder[i] for i in range(len(folder))]  # bad files are replaced by the next readable one
    assert dict(folder.counts) == {"empty": 1, "undecodable": 1}  # each bad file counted once, by kind
    assert all(s["image"].shape == (3, 16, 16) for s in samples)
    stream = iter(RandomSampleStream(ds, seed=0))
    assert next(stream)["image"].shape == (3, 16, 16)


def test_shards_from_shared_coco_with_captions(shared_data, tmp_path):
    """COCO's val2017 (79 photos, 5 captions each) written with its caption file: every image comes back once,
    with its first caption in evaluation and one of its own five in training."""
    from vtok.data.shards import coco_captions

    coco = shared_data / "coco-mini"
    captions = coco_captions(coco / "annotations" / "captions_val2017.json")
    items, total = folder_items(coco / "val2017", captions)
    assert total == 79
    summary = write_shards(items, tmp_path, maxcount=32, total=total, progress=False)
    assert summary.written == 79 and not summary.skipped and summary.captions == 79
    ds = ShardDataset(str(tmp_path / "shard-*.tar"), ImageTransform(size=64, mode="center"), resampled=False,
                      shuffle_buffer=0, captions=True)
    samples = list(ds)
    assert len(samples) == 79 and all(s["image"].shape == (3, 64, 64) for s in samples)
    by_file = {name.rsplit(".", 1)[0]: texts for name, texts in captions.items()}
    assert {s["key"] for s in samples} == set(by_file)
    assert all(s["caption"] == by_file[s["key"]][0].strip() for s in samples)
    training = iter(ShardDataset(str(tmp_path / "shard-*.tar"), ImageTransform(size=64), resampled=True,
                                 shuffle_buffer=0, captions=True, seed=0))
    drawn = [next(training) for _ in range(40)]
    assert all(s["caption"] in [t.strip() for t in by_file[s["key"]]] for s in drawn)


def test_sample_shards_are_written_once_and_rebuilt_when_the_split_changes(tmp_path, monkeypatch):
    import json

    from vtok.data import samples

    tiny = np.zeros((16, 16, 3), np.uint8)
    photos = {name: ((lambda: tiny), f"caption of {name}") for name in ("a", "b", "c")}
    monkeypatch.setattr(samples, "PHOTOS", photos)
    monkeypatch.setattr(samples, "TRAIN", ("a", "b"))
    monkeypatch.setattr(samples, "VALIDATION", ("c",))
    monkeypatch.setattr(samples, "TEST", ("d",))
    photos["d"] = ((lambda: tiny), "caption of d")
    samples.build_sample_shards(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"train": ["a", "b"], "val": ["c"],
                                                                    "test": ["d"]}
    written = (tmp_path / "train-000000.tar").stat().st_mtime_ns
    samples.build_sample_shards(tmp_path)  # same split: reused, not rewritten
    assert (tmp_path / "train-000000.tar").stat().st_mtime_ns == written
    monkeypatch.setattr(samples, "TRAIN", ("a",))
    monkeypatch.setattr(samples, "VALIDATION", ("b", "c"))
    samples.build_sample_shards(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"train": ["a"], "val": ["b", "c"],
                                                                    "test": ["d"]}
    with tarfile.open(tmp_path / "val-000000.tar") as tar:
        assert sorted(name for name in tar.getnames() if name.endswith(".png")) == ["b.png", "c.png"]


def test_whole_images_of_different_sizes_batch_only_one_at_a_time(tmp_path):
    from vtok.data import TokenizerDataModule

    root = tmp_path / "photos"
    root.mkdir()
    (root / "wide.png").write_bytes(_png((200, 10, 10), size=(48, 32)))
    (root / "tall.png").write_bytes(_png((10, 200, 10), size=(32, 48)))
    full = ImageFolder(str(root), ImageTransform(size=16, mode="full", multiple=16))

    def loader(val_batch_size):
        data = TokenizerDataModule(train=full, val=full, val_batch_size=val_batch_size, num_workers=0)
        data.setup("validate")
        return data.val_dataloader()

    assert {tuple(batch["image"].shape) for batch in loader(1)} == {(1, 3, 32, 48), (1, 3, 48, 32)}
    with pytest.raises(ValueError, match=r"data.val_batch_size=1"):
        next(iter(loader(2)))


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_members_reads_what_tarfile_reads(tmp_path, tar_format):
    from vtok.data.tar_members import TarDamaged, is_plain_tar, tar_members

    path = tmp_path / "shard.tar"
    members = {"a/000001.jpg": b"x" * 700, "a/000001.txt": "café".encode(), "b/" + "n" * 60 + "/000002.png": b"",
               "000003.json": b"{}" * 300}
    if tar_format != tarfile.USTAR_FORMAT:
        members["d" * 150 + ".jpg"] = b"long name" * 100  # over ustar's 100 + 155 characters: L or pax records
    with tarfile.open(path, "w", format=tar_format) as tar:
        tar.addfile(tarfile.TarInfo("a"))  # an empty regular file, then a directory (skipped)
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert is_plain_tar(str(path))
    assert list(tar_members(str(path))) == [("a", b""), *members.items()]

    data = path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    read = []
    with pytest.raises(TarDamaged, match="cut short"):
        for name, _ in tar_members(str(tmp_path / "cut.tar")):
            read.append(name)
    assert read and read == [n for n in ["a", *members] if n in read]  # the members before the cut came through
    broken = bytearray(data)
    broken[0] ^= 0xFF  # first header's name, so its checksum no longer matches
    (tmp_path / "broken.tar").write_bytes(bytes(broken))
    with pytest.raises(TarDamaged, match="checksum"):
        list(tar_members(str(tmp_path / "broken.tar")))
    with tarfile.open(tmp_path / "shard.tar.gz", "w:gz") as tar:
        tar.add(path, arcname="x.tar")
    assert not is_plain_tar(str(tmp_path / "shard.tar.gz"))  # compressed shards go through WebDataset's reader
