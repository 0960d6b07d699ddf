"""Building and publishing a snapshot's manifest: the moment a snapshot starts to count.

A snapshot directory holds stripe files and their ``.done`` completion records, written
by the shim in each rank. Nothing in it may be loaded until ``publish`` has checked that a
complete set of stripes for one step is there and has written ``manifest.json`` by atomic
rename (tmp + fsync + rename + fsync of the directory; invariant I2). Publishing is
idempotent, and two processes publishing the same directory at once is safe: each writes
its own temporary file and the renames replace one complete manifest by another.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import CorruptSnapshotError
from .format import FORMAT, META_KEY, read_header, split_key

MANIFEST = "manifest.json"
_DONE_RE = re.compile(r"^stripe-(\d+)-of-(\d+)\.done$")


def stripe_name(j: int, k: int) -> str:
    return f"stripe-{j}-of-{k}.safetensors"


def read_done_records(snap_dir: Path) -> dict[int, dict[int, dict[str, Any]]]:
    """Completion records by nstripes, then stripe index. Unreadable ones are skipped:
    a missing record just means that stripe is not complete."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for p in Path(snap_dir).iterdir():
        match = _DONE_RE.match(p.name)
        if not match:
            continue
        j, k = int(match.group(1)), int(match.group(2))
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("stripe") == j and rec.get("nstripes") == k:
            out.setdefault(k, {})[j] = rec
    return out


def complete_set(snap_dir: Path) -> tuple[int, list[dict[str, Any]]] | None:
    """(k, records for stripes 0..k-1) if some k has all its stripes done, else None.
    Prefers the smallest k (a reassigned snapshot may leave stray records of another k)."""
    for k, recs in sorted(read_done_records(snap_dir).items()):
        if all(j in recs for j in range(k)):
            return k, [recs[j] for j in range(k)]
    return None


def build_manifest(snap_dir: Path, *, world_size: int | None = None) -> dict[str, Any]:
    """Manifest for the complete stripe set in snap_dir; CorruptSnapshotError if none."""
    snap_dir = Path(snap_dir)
    found = complete_set(snap_dir)
    if found is None:
        raise CorruptSnapshotError(f"{snap_dir}: no complete set of stripes (.done records)")
    k, recs = found
    step, fingerprint = recs[0].get("step"), recs[0].get("fingerprint")
    files: dict[str, dict[str, int]] = {}
    tensors: dict[str, dict[str, Any]] = {}
    meta = None
    for j, rec in enumerate(recs):
        name = stripe_name(j, k)
        path = snap_dir / name
        if rec.get("step") != step or rec.get("fingerprint") != fingerprint:
            raise CorruptSnapshotError(
                f"{path.with_suffix('.done')}: step/fingerprint differ from stripe 0's")
        if not path.is_file():
            raise CorruptSnapshotError(f"{path}: stripe file missing")
        hdr = read_header(path)
        if hdr.file_size != rec.get("bytes"):
            raise CorruptSnapshotError(
                f"{path}: {hdr.file_size} bytes, completion record says {rec.get('bytes')}")
        md = hdr.metadata
        if (md.get("step"), md.get("fingerprint"), md.get("stripe"), md.get("nstripes")) != (
                str(step), fingerprint, str(j), str(k)):
            raise CorruptSnapshotError(f"{path}: header metadata disagrees with its record")
        files[name] = {"bytes": hdr.file_size, "crc32c": int(rec["crc32c"])}
        shapes = json.loads(md.get("shapes", "{}"))
        for key, info in hdr.tensors.items():
            if key == META_KEY:
                if meta is None:
                    meta = {"file": name, "key": key, "bytes": info.end - info.begin}
                continue
            tname, start, end = split_key(key)
            if start is None:
                start, end, shape = 0, _numel(info.shape), list(info.shape)
            else:
                shape = shapes.get(tname)
                if shape is None:
                    raise CorruptSnapshotError(f"{path}: no full shape for piece {key!r}")
            t = tensors.setdefault(tname, {"dtype": info.dtype, "shape": shape, "chunks": []})
            if t["dtype"] != info.dtype or t["shape"] != shape:
                raise CorruptSnapshotError(f"{path}: {key!r} disagrees with other pieces")
            t["chunks"].append([name, key, start, end])
    for tname, t in tensors.items():
        pos = 0
        for _, key, start, end in sorted(t["chunks"], key=lambda c: c[2]):
            if start != pos:
                raise CorruptSnapshotError(f"{snap_dir}: tensor {tname!r} has a gap or overlap "
                                           f"at element {pos}")
            pos = end
        if pos != _numel(t["shape"]):
            raise CorruptSnapshotError(f"{snap_dir}: tensor {tname!r} incomplete")
    if meta is None:
        raise CorruptSnapshotError(f"{snap_dir}: no meta blob in any stripe")
    return {
        "format": FORMAT, "id": snap_dir.name, "step": step, "created": time.time(),
        "world_size": world_size, "fingerprint": fingerprint, "nstripes": k,
        "files": files, "tensors": tensors, "meta": meta,
        # RNG states are registered state (tensors or meta) like everything else.
        "rng": "registered",
    }


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def publish(snap_dir: str | os.PathLike, *, world_size: int | None = None) -> Path:
    """Publish snap_dir's manifest (idempotent); returns its path.

    Raises CorruptSnapshotError if the directory does not hold a complete stripe set.
    Checksums are not re-read here (``load`` verifies them before use)."""
    snap_dir = Path(snap_dir)
    target = snap_dir / MANIFEST
    manifest = build_manifest(snap_dir, world_size=world_size)
    try:
        old = json.loads(target.read_text(encoding="utf-8"))
        if (isinstance(old, dict) and old.get("step") == manifest["step"]
                and old.get("files") == manifest["files"]):
            return target
    except (OSError, ValueError):
        pass
    tmp = snap_dir / f".{MANIFEST}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(snap_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target
