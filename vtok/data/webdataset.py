"""WebDataset reader: tar shards of images (and captions) streamed as training or evaluation samples.

The stream is a pure function of ``(seed, epoch, rank, worker)``: shard choice, shuffle buffer and each
sample's augmentation are drawn from generators seeded by those numbers. A resumed run therefore asks the
reader to skip the samples that were already consumed (undecoded, so skipping is cheap) and sees the same
batches an uninterrupted run would.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from braceexpand import braceexpand
from torch import Tensor
from torch.utils.data import IterableDataset
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from vtok.distributed import rank_and_world_size

from .decode import BadImage
from .stream import consumed_before, stream_worker
from .tar_members import TarDamaged, is_plain_tar, tar_members
from .transforms import IMAGE_EXTENSIONS, ImageTransform, ViewTransform

log = logging.getLogger(__name__)

_IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
DAMAGED = "__damaged__"  # the entry a damaged shard ends with
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's metadata members, skipped as its reader skips them


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns (``train-{000000..000009}.tar``), globs and lists -> a list of shard paths.

    Raises:
        FileNotFoundError: a local path does not exist, or the list is empty.
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for pattern in patterns:
        for url in braceexpand(str(pattern)):
            if "://" in url or url.startswith("pipe:"):
                out.append(url)
            elif any(ch in url for ch in "*?["):
                out.extend(sorted(glob.glob(url)))
            elif os.path.exists(url):
                out.append(url)
            else:
                raise FileNotFoundError(f"shard not found: {url}")
    if not out:
        raise FileNotFoundError(f"no shards match {urls!r}")
    return out


class ShardDataset(IterableDataset):
    """Image samples from WebDataset tar shards.

    Args:
        urls: shard paths: a brace pattern, a glob, or a list of them.
        transform: crop/flip applied to each decoded image.
        resampled: draw shards at random with replacement forever (training); ``False`` reads each shard
            once, split by node then by worker (evaluation).
        shuffle_buffer: samples held for shuffling; 0 keeps shard order.
        captions: also return ``caption`` from a ``txt`` or ``json`` (``{"caption": ...}``) member.
        seed: base seed of every random choice.
        epoch_length: samples each rank yields per pass (``with_epoch``); ``None`` for endless/one pass.
        decode_cache: decoded images kept per worker, keyed by sample key; for small sets such as the
            embedded samples, where decoding a whole photo for every small crop would dominate the step.
            A shard with no more samples than this is also kept in memory after its first read, so that
            resampling it replays the same samples instead of re-reading the tar.
        member: the member that holds the image (e.g. ``depth.png`` beside a ``jpg``); ``None``: the first image
            member found. With a :class:`~vtok.data.depth.DepthTransform`, one-channel depth maps.

    Yields:
        dicts with ``image`` ``(3, H, W)`` in ``[-1, 1]``, ``key``, ``stream_worker`` and ``stream_position`` (where
        the sample stands in its worker's raw stream, for exact resume) and, with ``captions``, ``caption``.
    """

    def __init__(
        self,
        urls: str | list[str],
        transform: ViewTransform | None = None,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        captions: bool = False,
        seed: int = 0,
        epoch_length: int | None = None,
        decode_cache: int = 0,
        member: str | None = None,
    ) -> None:
        super().__init__()
        self.member = member
        self.urls = expand_urls(urls)
        self.transform = transform or ImageTransform()
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.captions = captions
        self.seed = seed
        self.epoch_length = epoch_length
        self.epoch = 0
        self.skip_batches = 0
        self.batch_size = 1
        self.skip_positions: dict[int, int] | None = None
        self._split_checked = False
        self.counts: Counter[str] = Counter()  # skipped samples and caption problems, by kind (this worker)
        self.decode_cache = decode_cache
        self._decoded: dict[str, Tensor] = {}  # (3, H, W) uint8
        self._small_shards: dict[str, list[dict[str, Any]]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_after(self, batches: int, batch_size: int, positions: dict[int, int] | None = None) -> None:
        """Make the next pass start after ``batches`` batches of ``batch_size`` already consumed on this rank;
        ``positions`` (stream worker -> last raw position it delivered) makes it exact after skipped samples."""
        self.skip_batches, self.batch_size = batches, batch_size
        self.skip_positions = None if positions is None else {int(k): int(v) for k, v in positions.items()}

    def _check_split(self, rank: int, world: int, worker: int, workers: int) -> None:
        """Say (once, on rank 0's first worker) what fewer shards than readers (ranks x workers) mean."""
        readers = world * workers
        if len(self.urls) >= readers or self._split_checked:
            return
        self._split_checked = True
        numbers = f"{len(self.urls)} shards for {world} rank(s) x {workers} data worker(s) = {readers} readers"
        if self.resampled:
            if rank == 0 and worker == 0:
                log.warning("%s: readers draw shards at random, so several often read the same shard at the same "
                            "time and batches mix fewer shards; write more, smaller shards (vtok-shards "
                            "... maxcount=N)", numbers)
        elif self.epoch_length is not None:
            raise ValueError(f"{numbers}: a one-pass stream of fixed epoch length leaves "
                             f"{readers - len(self.urls)} reader(s) with nothing to read; use resampled=true or "
                             f"at least {readers} shards")
        elif rank == 0 and worker == 0:
            log.info("%s: %d reader(s) have no shard (every image is still read once)", numbers,
                     readers - len(self.urls))

    def _my_shards(self, rank: int, world: int, worker: int, workers: int) -> Iterator[str]:
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 1])
        if self.resampled:
            while True:
                yield self.urls[int(rng.integers(len(self.urls)))]
        else:
            yield from self.urls[rank::world][worker::workers]

    def _raw_samples(self, rank: int, world: int, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        def read(url: str) -> Iterator[dict[str, Any]]:
            if url in self._small_shards:
                yield from self._small_shards[url]
                return
            damage: list[Exception] = []

            def note_damage(error: Exception) -> bool:  # WebDataset's handler protocol: True = carry on
                damage.append(error)
                return True

            if is_plain_tar(url):
                files = _tar_files(url, note_damage)
            else:  # remote, piped or compressed: WebDataset's reader
                files = tar_file_expander(url_opener([{"url": url}], handler=note_damage), handler=note_damage)
            kept: list[dict[str, Any]] = []
            small = self.decode_cache > 0
            pending = None  # held back one sample: the one being read when damage hits may lack members
            for sample in group_by_keys(files, handler=note_damage):
                if pending is not None:
                    yield pending
                pending = sample
                if small:
                    kept.append(sample)
                    small = len(kept) <= self.decode_cache
            if damage:  # the sample it hit and the rest of the shard are lost: one entry, counted like a bad sample
                yield {DAMAGED: "; ".join(map(str, damage)), "__key__": url, "__url__": url}
                return
            if pending is not None:
                yield pending
            if small:  # read whole (a shard cut short is read again next time) and it fits
                self._small_shards[url] = kept

        samples = (sample for url in self._my_shards(rank, world, worker, workers) for sample in read(url))
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 2])
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _caption(self, raw: dict[str, Any], rng: np.random.Generator | None) -> str:
        caption, problem = _caption(raw, rng)
        if problem is not None:
            self.counts[problem] += 1
            if problem == "caption_not_utf8" or self.counts[problem] == 1:
                log.warning("sample %s in %s: %s (kept, caption %r); so far on this worker: %s", raw.get("__key__"),
                            raw.get("__url__"), problem, caption[:60], dict(self.counts))
        return caption

    def _view(self, raw: dict[str, Any], image_key: str, rng: np.random.Generator) -> Tensor:
        """The sample's transformed image: decoded for this view (at a reduced size when the crop allows), or
        cut from the cached whole decode."""
        if not self.decode_cache:
            return self.transform.load(raw[image_key], rng)
        cache_key = f"{raw.get('__url__')}/{raw.get('__key__')}"
        if cache_key not in self._decoded:
            if len(self._decoded) >= self.decode_cache:
                self._decoded.pop(next(iter(self._decoded)))
            self._decoded[cache_key] = self.transform.decode(raw[image_key])
        return self.transform(self._decoded[cache_key], rng)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = rank_and_world_size()
        worker, workers = stream_worker(self.skip_batches)
        self._check_split(rank, world, worker, workers)
        if self.skip_positions is not None:  # raw positions: exact whatever was skipped as unreadable
            skip = self.skip_positions.get(worker, 0)
        else:
            skip = consumed_before(worker, workers, self.skip_batches) * self.batch_size
        limit = None if self.epoch_length is None else -(-self.epoch_length // workers)
        produced = position = 0
        for raw in self._raw_samples(rank, world, worker, workers):
            position += 1
            if position <= skip:
                continue
            image_key = self.member if self.member in raw else (
                None if self.member else next((k for k in _IMAGE_KEYS if k in raw), None))
            rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 3, position])
            key = raw.get("__key__", "")
            try:
                if DAMAGED in raw:
                    raise BadImage("damaged_shard", f"the rest of the shard is unreadable: {raw[DAMAGED]}")
                if image_key is None:
                    members = sorted(k for k in raw if not k.startswith("__"))
                    raise BadImage("no_image", f"members {members}")
                image = self._view(raw, image_key, rng)
            except BadImage as error:
                self.counts[error.kind] += 1
                log.warning("skipped sample %s in %s (%s); skipped so far on this worker: %s", key,
                            raw.get("__url__"), error, dict(self.counts))
                if not self.resampled:  # evaluation: the batch collation counts it for the report
                    yield {"skipped": error.kind, "key": key}
                continue
            sample = {"image": image, "key": key, "stream_worker": worker, "stream_position": position}
            if self.captions:
                sample["caption"] = self._caption(raw, rng if self.resampled else None)
                prompt = _prompt(raw)
                if prompt is not None:
                    sample["prompt"] = prompt
            yield sample
            produced += 1
            if limit is not None and produced >= limit:
                return


def _tar_files(url: str, on_error: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """A local plain tar's files as WebDataset's ``group_by_keys`` takes them (``fname``, ``data``, ``__url__``),
    without its metadata files (``__*__``); a damaged header or member ends the shard after ``on_error``."""
    try:
        for name, data in tar_members(url):
            if not _META.match(name):
                yield {"fname": name, "data": data, "__url__": url}
    except TarDamaged as error:
        on_error(error)


def _meta(raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The sample's ``json`` member as a dict (``{}`` when absent) and its problem: ``json_invalid`` when the
    member is not a UTF-8 JSON object (then ``{}``), else ``None``."""
    if "json" not in raw:
        return {}, None
    try:
        meta = json.loads(raw["json"])
    except ValueError:  # invalid JSON or not UTF-8
        return {}, "json_invalid"
    return (meta, None) if isinstance(meta, dict) else ({}, "json_invalid")


def _prompt(raw: dict[str, Any]) -> str | None:
    """An instruction sample's ``prompt`` (``json`` with ``prompt`` and ``answer``), else ``None``."""
    prompt = _meta(raw)[0].get("prompt")
    return str(prompt) if prompt is not None else None


def _caption(raw: dict[str, Any], rng: np.random.Generator | None) -> tuple[str, str | None]:
    """The sample's caption: an instruction sample's ``answer``; with several (``json`` ``captions``), a random
    one per training visit (``rng``) and the first in evaluation; else ``txt``; else ``""``. Returns
    ``(caption, problem)`` with problem ``caption_not_utf8`` (bytes replaced), ``json_invalid`` (the ``json``
    member unreadable: ``txt`` or ``""`` used), ``no_caption`` or ``None``."""
    meta, problem = _meta(raw)
    if "answer" in meta:
        return str(meta["answer"]).strip(), None
    caption = meta.get("captions", meta.get("caption", ""))
    if isinstance(caption, list) and caption:
        return str(caption[int(rng.integers(len(caption)))] if rng is not None else caption[0]).strip(), None
    if caption:
        return str(caption).strip(), None
    if "txt" in raw:
        try:
            return raw["txt"].decode("utf-8").strip(), problem
        except UnicodeDecodeError:
            return raw["txt"].decode("utf-8", errors="replace").strip(), "caption_not_utf8"
    return "", problem or "no_caption"
