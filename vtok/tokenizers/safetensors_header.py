"""Read and check a ``.safetensors`` header before any tensor is allocated.

The format is an 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape", "data_offsets"}}``
and the data. A mutated file may declare a header larger than the file, offsets past its end, overlapping or
mis-sized ranges, or shapes and dtypes that disagree with the model: each is refused here, by name, so a model is
only ever filled from bytes the file really holds.
"""

from __future__ import annotations

import itertools
import json
import math
import stat
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidWeightsError

MAX_HEADER_BYTES = 100 * 2**20

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def read_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors file, checked for internal consistency.

    Raises:
        InvalidWeightsError: naming the file and what is wrong (also for bytes after the last tensor, which the
            format does not allow, and for anything but a regular file).
    """
    path = Path(path)
    if not stat.S_ISREG(path.stat().st_mode):
        raise InvalidWeightsError(f"{path} is not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InvalidWeightsError(f"{path}: {size} bytes, too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise InvalidWeightsError(f"{path}: header of {length} bytes declared in a file of {size} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise InvalidWeightsError(f"{path}: header is not valid JSON ({type(error).__name__})") from error
    if not isinstance(header, dict):
        raise InvalidWeightsError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InvalidWeightsError(f"{path}: entry {name!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise InvalidWeightsError(f"{path}: {name!r} has dtype {dtype!r}; vtok reads {sorted(DTYPES)}")
        if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                 for n in shape)):
            raise InvalidWeightsError(f"{path}: {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) and not isinstance(n, bool)
                                                                        for n in offsets)):
            raise InvalidWeightsError(f"{path}: {name!r} has data_offsets {offsets!r}")
        start, end = offsets
        expected = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        if not 0 <= start <= end <= data_size or end - start != expected:
            raise InvalidWeightsError(f"{path}: {name!r} spans bytes {start}..{end} of {data_size}, but shape "
                                      f"{shape} of {dtype} needs {expected}")
        spans.append((start, end, name))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise InvalidWeightsError(f"{path}: tensors {a!r} and {b!r} overlap")
    indexed = max((end for _, end, _ in spans), default=0)
    if indexed != data_size:  # the format indexes every data byte; a tail would also inflate the size allowance
        raise InvalidWeightsError(f"{path}: {data_size - indexed:,} bytes after the last tensor (a damaged or "
                                  "padded file)")
    return header


def check_fits(header: dict[str, dict[str, Any]], expected: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`InvalidWeightsError` unless ``header`` holds exactly ``expected``'s names, shapes and dtypes
    (``expected``: a model's state dict, e.g. built on the meta device)."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise InvalidWeightsError(f"{path} does not fit config.json: missing {missing[:5]}, unexpected "
                                  f"{unexpected[:5]}")
    for name, tensor in expected.items():
        entry = header[name]
        if list(tensor.shape) != entry["shape"]:
            raise InvalidWeightsError(f"{path}: {name!r} has shape {entry['shape']}, config.json implies "
                                      f"{list(tensor.shape)}")
        if DTYPES[entry["dtype"]] != tensor.dtype:
            raise InvalidWeightsError(f"{path}: {name!r} is {entry['dtype']}, config.json implies "
                                      f"{NAMES.get(tensor.dtype, tensor.dtype)}")
