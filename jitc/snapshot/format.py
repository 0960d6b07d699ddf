"""The stripe file format: the safetensors layout, read and checked without trusting it.

The shim writes stripe files natively (csrc/snapshot/header.cpp); this module is the
Python reader's first line of defence. ``read_header`` parses and validates a stripe's
header against the file's real size before anything else looks at it, so a truncated or
garbled file is reported as a ``CorruptSnapshotError`` naming the file rather than
surfacing later as a confusing error from safetensors or torch.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CorruptSnapshotError

FORMAT = "jitc-snapshot/1"
META_KEY = "__jitc_meta__"
MAX_HEADER = 100 * 1024 * 1024   # the safetensors package's own limit

# safetensors dtype string -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1), "U16": (torch.uint16, 2), "U32": (torch.uint32, 4),
    "U64": (torch.uint64, 8), "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}
TORCH_TO_ST = {t: name for name, (t, _) in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors name of a torch dtype (the registry uses these names)."""
    try:
        return TORCH_TO_ST[dtype]
    except KeyError:
        raise CorruptSnapshotError(f"dtype {dtype} cannot be stored in a snapshot") from None


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int            # relative to the data section
    end: int


@dataclass(frozen=True)
class StripeHeader:
    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]    # in file order
    data_start: int                   # absolute offset of the data section
    file_size: int


def _bad(path: Path, what: str) -> CorruptSnapshotError:
    return CorruptSnapshotError(f"{path}: {what}")


def read_header(path: Path) -> StripeHeader:
    """Parse and validate a stripe file's header; the data section must match it exactly."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"truncated: {size} bytes, no header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise _bad(path, f"truncated or garbled: header length {n}, file {size} bytes")
            raw = f.read(n)
    except OSError as e:
        raise _bad(path, f"cannot read ({e.strerror})") from None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:   # not UTF-8, not JSON, an absurd number
        raise _bad(path, f"header is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _bad(path, "header is not a JSON object")
    meta = obj.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(path, "__metadata__ is not a string map")
    tensors: dict[str, TensorInfo] = {}
    for key, info in obj.items():
        tensors[key] = _tensor_info(path, key, info)
    expected = 0
    for key, t in sorted(tensors.items(), key=lambda kv: kv[1].begin):
        if t.begin != expected:
            raise _bad(path, f"tensor {key!r} starts at {t.begin}, expected {expected}")
        expected = t.end
    data_start = 8 + n
    if data_start + expected != size:
        raise _bad(path, f"size {size} bytes, header describes {data_start + expected} "
                         "(truncated or extended)")
    return StripeHeader(path, meta, tensors, data_start, size)


def _tensor_info(path: Path, key: str, info: object) -> TensorInfo:
    if not isinstance(info, dict):
        raise _bad(path, f"entry {key!r} is not an object")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _bad(path, f"tensor {key!r}: unknown dtype {str(dtype)[:40]!r}")
    if (not isinstance(shape, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise _bad(path, f"tensor {key!r}: bad shape {shape!r}")
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(type(o) is int and o >= 0 for o in offs) or offs[1] < offs[0]):
        raise _bad(path, f"tensor {key!r}: bad data_offsets {offs!r}")
    numel = 1
    for s in shape:
        numel *= s
    if (offs[1] - offs[0]) != numel * DTYPES[dtype][1]:
        raise _bad(path, f"tensor {key!r}: {offs[1] - offs[0]} bytes for shape {shape} {dtype}")
    return TensorInfo(dtype, tuple(shape), offs[0], offs[1])


def split_key(key: str) -> tuple[str, int | None, int | None]:
    """"name" -> (name, None, None); "name@s:e" -> (name, s, e)."""
    name, at, rng = key.rpartition("@")
    if not at:
        return key, None, None
    start, colon, end = rng.partition(":")
    if not colon or not (start + end).isascii() or not start.isdigit() or not end.isdigit():
        return key, None, None
    return name, int(start), int(end)
