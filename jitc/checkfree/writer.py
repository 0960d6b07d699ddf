"""Writing a rebuilt stage as an ordinary published snapshot, from Python.

Why this exists: snapshots are normally written by the shim inside the ranks; a stage
rebuilt by CheckFree exists only in the supervisor. It is written in exactly the
format the shim writes (docs/internals.md "Snapshot layout"): one stripe file in the
safetensors layout whose ``__metadata__`` carries step, stripe, nstripes and
fingerprint, the meta blob as the ``__jitc_meta__`` U8 tensor, a ``.done`` completion
record with the file's CRC32C, then ``snapshot.publish`` writes the manifest by atomic
rename. So ``jitc inspect`` verifies it and ``protect()`` loads it like any other.

The fingerprint is the shim's (FNV-1a 64 over name, dtype, shape; csrc/snapshot/
registry.cpp) computed over the tensors written here.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from .. import private
from ..snapshot.format import FORMAT, META_KEY, dtype_name
from ..snapshot.manifest import publish, stripe_name
from ..snapshot.verify import file_crc32c

_FNV_OFFSET, _FNV_PRIME, _MASK = 0xcbf29ce484222325, 0x100000001b3, (1 << 64) - 1


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """The shim's registry fingerprint of these (name, dtype, shape) entries, in order."""
    h = _FNV_OFFSET

    def mix(data: bytes) -> None:
        nonlocal h
        for b in data:
            h = ((h ^ b) * _FNV_PRIME) & _MASK

    for name, t in tensors.items():
        mix(name.encode() + b"\0" + dtype_name(t.dtype).encode() + b"\0")
        mix(struct.pack("<Q", t.dim()))
        for s in t.shape:
            mix(struct.pack("<q", s))
    return f"{h:016x}"


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The safetensors layout, tensors in the given order (``save_file`` sorts them, and
    the order is the registration order the loader hands back)."""
    header: dict = {"__metadata__": metadata}
    blobs, off = [], 0
    for name, t in tensors.items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)                  # data section 8-byte aligned
    with private.open_private(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for raw in blobs:
            f.write(raw)
        f.flush()
        os.fsync(f.fileno())


def _fsync_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with private.open_private(tmp) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_snapshot(directory: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor],
                   meta: bytes, *, world_size: int | None = None) -> Path:
    """Write ``tensors`` + ``meta`` as a one-stripe snapshot of ``step``; returns the manifest."""
    directory = Path(directory)
    private.make_dirs(directory)
    fp = fingerprint(tensors)
    name = stripe_name(0, 1)
    path = directory / name
    body = dict(tensors)
    body[META_KEY] = torch.tensor(list(meta), dtype=torch.uint8)
    _save(path, body, {"format": FORMAT, "step": str(step), "stripe": "0", "nstripes": "1",
                       "fingerprint": fp, "shapes": "{}"})
    record = {"step": step, "bytes": path.stat().st_size, "crc32c": file_crc32c(path),
              "fingerprint": fp, "stripe": 0, "nstripes": 1, "keys": len(body), "file": name}
    _fsync_write(directory / "stripe-0-of-1.done", json.dumps(record) + "\n")
    return publish(directory, world_size=world_size)
