"""Images (and captions) of a Hugging Face dataset as a training stream or a validation pass (``data=hf``).

A hub id, a local folder of parquet / arrow files, a ``save_to_disk`` folder, or parquet files named directly.
By default the split is opened with ``datasets.load_dataset`` (memory-mapped Arrow, random access); with
``streaming=true`` its parquet files are read row group by row group, for sets larger than the disk.

The training stream is a pure function of ``(seed, rank, worker, position)``, like the WebDataset reader: in the
map-style mode the readers (ranks x workers) split one permutation of the split per epoch (each image once per
epoch across them); streaming, they split the files (or, with fewer files than readers, the rows). Samples carry
``stream_worker`` and ``stream_position``, so a resumed run starts exactly where it stopped, unreadable images
included. Images are decoded by vtok (``vtok.data.decode``), so hostile ones are skipped and counted by the same
kinds as everywhere else.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from vtok.distributed import rank_and_world_size

from .decode import BadImage
from .stream import consumed_before, stream_worker
from .transforms import ImageTransform

log = logging.getLogger(__name__)

PATH_KEY = "data.hf.path"
SPLIT_KEYS = "data.hf.train_split / val_split / test_split (eval.split=test reads the test split)"


class HFImages(IterableDataset):
    """Samples of one split of a Hugging Face dataset.

    Args:
        path: hub id (``ILSVRC/imagenet-1k``), a local dataset folder, or a parquet file / glob.
        split: the split to read (``train``, ``validation``, ...).
        name: the dataset's configuration name, if it has several.
        data_files: files for the split, overriding the dataset's own layout (a glob, a list, or
            ``{split: files}``).
        image_column: the column holding images (``datasets.Image``, raw bytes, or file paths).
        caption_column: the column holding a caption or a list of captions (``None``: no captions).
        captions: also yield ``caption`` (a random one of a list per training visit, the first in evaluation).
        training: an endless shuffled stream (``True``) or one pass in order, split by rank (``False``).
        streaming: read the parquet files row group by row group instead of opening the split with ``datasets``.
        transform: crop / flip of each decoded image.
        seed: base seed of every random choice.
        shuffle_buffer: rows held for shuffling in the streaming training mode.
        revision, cache_dir: passed to ``datasets``.

    Yields:
        dicts with ``image`` ``(3, H, W)`` in ``[-1, 1]``, ``key``, ``stream_worker``, ``stream_position`` and, with
        ``captions``, ``caption``; in evaluation an unusable image yields ``{"skipped": kind, "key": key}``.
    """

    def __init__(self, path: str, split: str = "train", name: str | None = None, data_files: Any = None,
                 image_column: str = "image", caption_column: str | None = None, captions: bool = False,
                 training: bool = True, streaming: bool = False, transform: ImageTransform | None = None,
                 seed: int = 0, shuffle_buffer: int = 1000, revision: str | None = None,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        self.path, self.split, self.name, self.data_files = str(path), split, name, data_files
        self.image_column, self.caption_column = image_column, caption_column
        self.captions, self.training, self.streaming = captions, training, streaming
        self.transform = transform or ImageTransform()
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.revision, self.cache_dir = revision, cache_dir
        if captions and caption_column is None:
            raise ValueError("data.hf.captions=true needs data.hf.caption_column (the column holding captions)")
        self.skip_batches, self.batch_size = 0, 1
        self.skip_positions: dict[int, int] | None = None
        self.counts: Counter[str] = Counter()
        self._table = None  # the opened split (map-style), opened lazily in each worker
        self.files = open_files(self) if streaming else None
        self.length = None if streaming else len(self._open())

    def resume_after(self, batches: int, batch_size: int, positions: dict[int, int] | None = None) -> None:
        """Start after ``batches`` batches of ``batch_size`` consumed on this rank; ``positions`` (stream worker ->
        last raw position delivered) makes it exact after skipped images."""
        self.skip_batches, self.batch_size = batches, batch_size
        self.skip_positions = None if positions is None else {int(k): int(v) for k, v in positions.items()}

    def _open(self):
        if self._table is None:
            self._table = open_split(self)
        return self._table

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = rank_and_world_size()
        worker, workers = stream_worker(self.skip_batches)
        reader, readers = rank * workers + worker, world * workers
        if self.skip_positions is not None:
            skip = self.skip_positions.get(worker, 0)
        else:
            skip = consumed_before(worker, workers, self.skip_batches) * self.batch_size
        rows = self._streamed_rows(reader, readers, skip) if self.streaming else self._indexed_rows(reader, readers,
                                                                                                      skip)
        for position, row, key in rows:
            rng = np.random.default_rng([self.seed, reader, 3, position])
            try:
                image = self.transform.load(image_bytes(row.get(self.image_column), self.image_column), rng)
            except BadImage as error:
                self.counts[error.kind] += 1
                log.warning("skipped row %s of %s (%s); skipped so far on this reader: %s", key, self.path, error,
                            dict(self.counts))
                if not self.training:
                    yield {"skipped": error.kind, "key": key}
                continue
            sample = {"image": image, "key": key, "stream_worker": worker, "stream_position": position}
            if self.captions:
                sample["caption"] = self._caption(row.get(self.caption_column), rng)
            yield sample

    def rows(self) -> Iterator[tuple[str, bytes | None, list[str]]]:
        """Every row of the split once, in order, undecoded: ``(key, image bytes or None, captions)`` (the shard
        writer's input; an image cell that cannot give bytes comes as ``None``)."""
        if self.streaming:
            assert self.files is not None
            rows = _parquet_rows(self.files, [c for c in (self.image_column, self.caption_column) if c], None)
        else:
            table = self._open()
            rows = ((table[i], f"{i:08d}") for i in range(self.length))
        for row, key in rows:
            try:
                data: bytes | None = image_bytes(row.get(self.image_column), self.image_column)
            except BadImage:
                data = None
            value = row.get(self.caption_column) if self.caption_column else None
            yield key, data, [value] if isinstance(value, str) else [str(c) for c in (value or [])]

    def _caption(self, value: Any, rng: np.random.Generator) -> str:
        captions = [value] if isinstance(value, str) else [str(c) for c in (value or [])]
        if not captions:
            self.counts["no_caption"] += 1
            return ""
        return captions[int(rng.integers(len(captions)))].strip() if self.training else captions[0].strip()

    def _indexed_rows(self, reader: int, readers: int, skip: int) -> Iterator[tuple[int, dict, str]]:
        """Map-style: training walks epoch permutations (this reader's every ``readers``-th entry of each);
        evaluation reads rows ``reader, reader + readers, ...`` once. Positions are 1-based, skipped by index."""
        table, n = self._open(), self.length
        share = len(range(reader, n, readers))
        if not self.training:
            for offset in range(skip, share):
                index = reader + offset * readers
                yield offset + 1, table[index], f"{self.split}/{index}"
            return
        if share == 0:
            raise ValueError(f"{self.path} [{self.split}] has {n} rows for {readers} readers (ranks x data workers):"
                             " some would read nothing; use fewer data.num_workers")
        order, order_epoch = None, -1
        position = skip
        while True:
            epoch, offset = divmod(position, share)
            if epoch != order_epoch:
                order, order_epoch = np.random.default_rng([self.seed, epoch]).permutation(n), epoch
            index = int(order[reader + offset * readers])
            position += 1
            yield position, table[index], f"{self.split}/{index}"

    def _streamed_rows(self, reader: int, readers: int, skip: int) -> Iterator[tuple[int, dict, str]]:
        """Streaming: the parquet files (or their rows, with fewer files than readers) split over the readers;
        training shuffles file order per epoch and rows through a buffer, and repeats forever."""
        assert self.files is not None
        columns = [c for c in (self.image_column, self.caption_column) if c]
        by_file = len(self.files) >= readers
        position, epoch = 0, 0
        while True:
            files = list(self.files)
            if self.training:
                files = [files[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(files))]
            mine = files[reader::readers] if by_file else files
            rows = _parquet_rows(mine, columns, None if by_file else (reader, readers))
            if self.training and self.shuffle_buffer > 1:
                rows = _shuffled(rows, self.shuffle_buffer, np.random.default_rng([self.seed, epoch, reader, 2]))
            produced = 0
            for row, key in rows:
                position += 1
                produced += 1
                if position > skip:
                    yield position, row, key
            if not self.training:
                return
            if produced == 0:
                raise ValueError(f"{self.path} [{self.split}]: reader {reader} of {readers} has no rows to read")
            epoch += 1


def image_bytes(value: Any, column: str) -> bytes:
    """An image cell -> its encoded bytes: a ``datasets.Image`` struct (``bytes`` or ``path``), raw bytes, or a
    file path.

    Raises:
        BadImage: ``no_image`` when the cell is empty or its file is missing.
    """
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value)
        if path.is_file():
            return path.read_bytes()
        raise BadImage("no_image", f"column {column!r} names {value}, which does not exist")
    raise BadImage("no_image", f"column {column!r} is empty")


def open_split(source: HFImages):
    """The split as a ``datasets.Dataset`` with its image column left encoded (vtok decodes it).

    Raises:
        FileNotFoundError: a hub id that cannot be reached (offline), naming ``data.hf.path``.
        KeyError: the split or a column is missing, naming the key and what there is.
    """
    import datasets

    path = Path(source.path)
    try:
        if path.is_dir() and (path / "dataset_dict.json").exists():
            table = datasets.load_from_disk(str(path))
            if source.split not in table:
                raise KeyError(f"{SPLIT_KEYS}: no split named {source.split}; {path} has the splits {sorted(table)}")
            table = table[source.split]
        elif path.is_dir() and (path / "state.json").exists():
            table = datasets.load_from_disk(str(path))
        else:
            data_files = source.data_files
            if data_files is None and (path.is_file() or any(ch in source.path for ch in "*?")):
                data_files = {source.split: source.path}
            loader = "parquet" if data_files is not None and str(path).endswith((".parquet", "*")) else source.path
            table = datasets.load_dataset(loader if data_files is not None else source.path, source.name,
                                          data_files=data_files, split=source.split, revision=source.revision,
                                          cache_dir=source.cache_dir)
    except (KeyError, FileNotFoundError):
        raise
    except ValueError as error:
        if "split" in str(error).lower():
            raise KeyError(f"{SPLIT_KEYS}: no split named {source.split} ({error})") from error
        raise
    except Exception as error:  # offline hub, missing dataset: the many types datasets and the hub raise
        if path.exists():
            raise
        raise FileNotFoundError(
            f"{PATH_KEY}={source.path}: not a local folder or file, and the Hugging Face hub could not give it "
            f"({type(error).__name__}: {str(error)[:300]}). Download it first (hf download --repo-type dataset "
            f"{source.path} --local-dir DIR) and set {PATH_KEY}=DIR") from error
    _check_columns(source, table.column_names)
    if isinstance(table.features.get(source.image_column), datasets.Image):
        table = table.cast_column(source.image_column, datasets.Image(decode=False))
    keep = [c for c in (source.image_column, source.caption_column) if c]
    return table.select_columns(keep)


def open_files(source: HFImages) -> list[str]:
    """The split's parquet files (local paths or ``hf://`` URLs), for the streaming mode.

    Raises:
        FileNotFoundError: as :func:`open_split`; ValueError: files that are not parquet.
    """
    import glob

    path = Path(source.path)
    if source.data_files is not None or path.is_file() or any(ch in source.path for ch in "*?"):
        pattern = source.data_files if source.data_files is not None else source.path
        if isinstance(pattern, dict):
            pattern = pattern[source.split]
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        files = sorted(f for p in patterns for f in (glob.glob(p) if not p.startswith("hf://") else [p]))
    else:
        import datasets

        try:
            builder = datasets.load_dataset_builder(source.path, source.name, revision=source.revision,
                                                    cache_dir=source.cache_dir)
        except Exception as error:
            if path.exists():
                raise
            raise FileNotFoundError(
                f"{PATH_KEY}={source.path}: not a local folder or file, and the Hugging Face hub could not give it "
                f"({type(error).__name__}: {str(error)[:300]})") from error
        splits = builder.config.data_files or {}
        if source.split not in splits:
            raise KeyError(f"{SPLIT_KEYS}: no split named {source.split}; {source.path} has the splits "
                           f"{sorted(splits)}")
        files = [str(f) for f in splits[source.split]]
    if not files:
        raise FileNotFoundError(f"{PATH_KEY}={source.path}: no files for split {source.split!r}")
    if any(not f.endswith(".parquet") for f in files):
        raise ValueError(f"data.hf.streaming=true reads parquet files; {source.path} [{source.split}] has "
                         f"{[f for f in files if not f.endswith('.parquet')][:3]}: use data.hf.streaming=false")
    import pyarrow.parquet as pq

    _check_columns(source, pq.read_schema(_open_file(files[0])).names)
    return files


def _check_columns(source: HFImages, names: list[str]) -> None:
    for key, column in (("image_column", source.image_column), ("caption_column", source.caption_column)):
        if column is not None and column not in names:
            raise KeyError(f"data.hf.{key}={column}: {source.path} [{source.split}] has the columns {names}")


def _open_file(url: str):
    import fsspec

    return fsspec.open(url, "rb").open()


def _parquet_rows(files: list[str], columns: list[str], modulo: tuple[int, int] | None
                  ) -> Iterator[tuple[dict, str]]:
    """Rows of ``files`` in order (only ``columns``); with ``modulo=(reader, readers)`` every ``readers``-th row."""
    import pyarrow.parquet as pq

    count = 0
    for url in files:
        with _open_file(url) as handle:
            number = 0
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=64, columns=columns):
                for row in batch.to_pylist():
                    keep = modulo is None or count % modulo[1] == modulo[0]
                    count += 1
                    number += 1
                    if keep:
                        yield row, f"{Path(url).name}/{number - 1}"


def _shuffled(rows: Iterator[tuple[dict, str]], size: int, rng: np.random.Generator
              ) -> Iterator[tuple[dict, str]]:
    buffer: list[tuple[dict, str]] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))
