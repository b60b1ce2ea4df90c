"""The files of a local, uncompressed tar shard, read straight from its 512-byte headers.

Python's ``tarfile`` builds a ``TarInfo`` per member through many layers; for shards of small images that
bookkeeping costs as much as a quarter of decoding the image. Shards are plain tar files written by
:func:`vtok.data.write_shards` (or any tar tool), so reading them needs only the POSIX header: name, size, type.
Compressed or remote shards go through WebDataset's reader instead (``is_plain_tar``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["TarDamaged", "is_plain_tar", "tar_members"]

BLOCK = 512


class TarDamaged(ValueError):
    """A header that fails its checksum or a member cut short: the rest of the shard cannot be trusted."""


def is_plain_tar(url: str) -> bool:
    """Whether ``url`` is a local file holding an uncompressed tar (``ustar`` magic in its first header)."""
    if "://" in url or url.startswith("pipe:") or not os.path.isfile(url):
        return False
    with open(url, "rb") as f:
        header = f.read(BLOCK)
    return len(header) == BLOCK and header[257:262] == b"ustar"


def tar_members(path: str) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of every regular file in the tar at ``path``, in order.

    Understands ustar names with a prefix, GNU long names (type ``L``) and pax ``path`` records (type ``x``);
    other member types (directories, links, global pax headers) are skipped.

    Raises:
        TarDamaged: a header with a wrong checksum, a member shorter than its header says, or a file that ends
            without the end-of-archive blocks (after the members before it were yielded).
    """
    with open(path, "rb", buffering=1 << 20) as f:
        long_name: str | None = None
        while True:
            header = f.read(BLOCK)
            if header == bytes(BLOCK):
                return  # end of archive (zero blocks)
            if len(header) < BLOCK:  # every tar writer ends with zero blocks: a file without them was cut short
                raise TarDamaged(f"{path}: cut short at byte {f.tell() - len(header)} (no end-of-archive blocks)")
            size, kind, name = _parse(header, f"{path} at byte {f.tell() - BLOCK}")
            data = f.read(size)
            if len(data) < size:
                raise TarDamaged(f"{path}: member {name!r} cut short ({len(data)} of {size} bytes)")
            f.seek(-size % BLOCK, os.SEEK_CUR)
            if kind == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind == b"x":
                long_name = _pax_path(data) or long_name
            elif kind in (b"0", b"\0", b"7"):
                yield (long_name or name), data
                long_name = None
            else:
                long_name = None


def _parse(header: bytes, where: str) -> tuple[int, bytes, str]:
    """A header block -> ``(size, type flag, name)``."""
    stored = _number(header[148:156], where)
    actual = sum(header) - sum(header[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored != actual:
        raise TarDamaged(f"{where}: header checksum {stored} != {actual} (not a tar, or damaged)")
    name = header[0:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    if prefix:
        name = prefix + b"/" + name
    return _number(header[124:136], where), header[156:157], name.decode("utf-8", "surrogateescape")


def _number(field: bytes, where: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError as error:
        raise TarDamaged(f"{where}: not an octal number: {field!r}") from error


def _pax_path(records: bytes) -> str | None:
    """The ``path`` of a pax extended header (records ``"<length> <key>=<value>\\n"``)."""
    position = 0
    while position < len(records):
        space = records.find(b" ", position)
        if space < 0:
            break
        try:
            length = int(records[position:space])
        except ValueError as error:
            raise TarDamaged(f"pax header record length {records[position:space]!r}") from error
        if length <= space - position:
            raise TarDamaged(f"pax header record of length {length}")
        key, _, value = records[space + 1 : position + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        position += length
    return None
