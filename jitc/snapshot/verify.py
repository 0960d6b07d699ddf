"""Checking a published snapshot before anything is loaded from it (invariant I2).

``verify_manifest`` is the single gate: the manifest's schema, then for every file its
size and CRC32C (read once through mmap, checksummed by the shim's ``jitc_crc32c``), then
its header against the manifest's tensor index. Any problem raises
``CorruptSnapshotError`` naming the file and what is wrong.
"""
from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any

from ..errors import CorruptSnapshotError
from .format import DTYPES, FORMAT, read_header

_CRC_BLOCK = 64 * 1024 * 1024


def file_crc32c(path: Path) -> int:
    """CRC32C of a whole file, computed natively (GIL released by cffi during the call)."""
    from .._shim import ffi_lib
    ffi, lib = ffi_lib()
    crc = 0
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                for off in range(0, size, _CRC_BLOCK):
                    block = view[off:off + _CRC_BLOCK]
                    crc = lib.jitc_crc32c(crc, ffi.from_buffer(block), len(block))
                    block.release()
            finally:
                view.release()
    return int(crc)


def read_manifest(manifest_path: Path) -> dict[str, Any]:
    """Parse manifest.json and check its schema (no file access beyond the manifest)."""
    manifest_path = Path(manifest_path)
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorruptSnapshotError(f"{manifest_path}: manifest missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptSnapshotError(f"{manifest_path}: cannot read ({e})") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptSnapshotError(f"{manifest_path}: not JSON ({e})") from None
    _check_schema(manifest_path, m)
    return m


def _check_schema(path: Path, m: Any) -> None:
    def bad(what: str) -> CorruptSnapshotError:
        return CorruptSnapshotError(f"{path}: {what}")

    if not isinstance(m, dict):
        raise bad("manifest is not a JSON object")
    if m.get("format") != FORMAT:
        raise bad(f"format {m.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(m.get("step"), int) or m["step"] < 0:
        raise bad(f"bad step {m.get('step')!r}")
    if not isinstance(m.get("fingerprint"), str):
        raise bad("fingerprint missing")
    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("no files")
    for name, info in files.items():
        if "/" in name or name.startswith("."):
            raise bad(f"file name {name!r} escapes the snapshot directory")
        if not (isinstance(info, dict) and isinstance(info.get("bytes"), int)
                and isinstance(info.get("crc32c"), int)):
            raise bad(f"file entry {name!r} lacks bytes/crc32c")
    tensors = m.get("tensors")
    if not isinstance(tensors, dict):
        raise bad("no tensor index")
    for name, t in tensors.items():
        if not (isinstance(t, dict) and t.get("dtype") in DTYPES and isinstance(t.get("shape"), list)
                and isinstance(t.get("chunks"), list) and t["chunks"]):
            raise bad(f"tensor entry {name!r} is malformed")
        for c in t["chunks"]:
            if not (isinstance(c, list) and len(c) == 4 and c[0] in files):
                raise bad(f"tensor {name!r}: bad chunk {c!r}")
    meta = m.get("meta")
    if not (isinstance(meta, dict) and meta.get("file") in files and isinstance(meta.get("key"), str)
            and isinstance(meta.get("bytes"), int)):
        raise bad("meta entry is malformed")


def verify_manifest(manifest_path: Path, *, checksums: bool = True) -> dict[str, Any]:
    """Full verification of a published snapshot; returns the manifest."""
    manifest_path = Path(manifest_path)
    m = read_manifest(manifest_path)
    root = manifest_path.parent
    headers = {}
    for name, info in m["files"].items():
        path = root / name
        if not path.is_file():
            raise CorruptSnapshotError(f"{path}: stripe file missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CorruptSnapshotError(
                f"{path}: {size} bytes, manifest says {info['bytes']} (truncated?)")
        if checksums:
            crc = file_crc32c(path)
            if crc != info["crc32c"]:
                raise CorruptSnapshotError(
                    f"{path}: CRC32C {crc:#010x}, manifest says {info['crc32c']:#010x}")
        hdr = read_header(path)
        if hdr.metadata.get("fingerprint") != m["fingerprint"]:
            raise CorruptSnapshotError(f"{path}: fingerprint differs from the manifest")
        if hdr.metadata.get("step") != str(m["step"]):
            raise CorruptSnapshotError(f"{path}: step {hdr.metadata.get('step')} != {m['step']}")
        headers[name] = hdr
    for tname, t in m["tensors"].items():
        for fname, key, start, end in t["chunks"]:
            info = headers[fname].tensors.get(key)
            if info is None or info.dtype != t["dtype"]:
                raise CorruptSnapshotError(f"{root / fname}: lacks {key!r} ({t['dtype']})")
    meta = m["meta"]
    info = headers[meta["file"]].tensors.get(meta["key"])
    if info is None or info.end - info.begin != meta["bytes"]:
        raise CorruptSnapshotError(f"{root / meta['file']}: meta blob missing or wrong size")
    return m
