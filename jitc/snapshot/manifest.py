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
import time
from pathlib import Path
from typing import Any

from .. import private
from ..errors import CorruptSnapshotError
from .digest import DIGEST, digest_of
from .format import FORMAT, META_KEY, StripeHeader, read_header, split_key
from .layout import MANIFEST, done_file, parse_done, stripe_file


def read_done_records(snap_dir: Path) -> dict[int, dict[int, dict[str, Any]]]:
    """Completion records by nstripes, then stripe index. Unreadable ones are skipped:
    a missing record just means that stripe is not complete."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for p in Path(snap_dir).iterdir():
        jk = parse_done(p.name)
        if jk is None:
            continue
        j, k = jk
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):   # ValueError: not UTF-8, not JSON
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
    """Manifest for the complete stripe set in snap_dir; CorruptSnapshotError if none.
    Reads the completion records and the stripe headers; builds the manifest in memory."""
    snap_dir = Path(snap_dir)
    found = complete_set(snap_dir)
    if found is None:
        raise CorruptSnapshotError(f"{snap_dir}: no complete set of stripes (.done records)")
    k, recs = found
    step, fingerprint = recs[0].get("step"), recs[0].get("fingerprint")
    if not (_is_int(step) and step >= 0 and isinstance(fingerprint, str)):
        raise CorruptSnapshotError(f"{snap_dir / done_file(0, k)}: bad step or fingerprint")
    files: dict[str, dict[str, int]] = {}
    headers = []
    for j, rec in enumerate(recs):
        name = stripe_file(j, k)
        path = snap_dir / name
        if rec.get("step") != step or rec.get("fingerprint") != fingerprint:
            raise CorruptSnapshotError(
                f"{snap_dir / done_file(j, k)}: step/fingerprint differ from stripe 0's")
        crc, nbytes = rec.get("crc32c"), rec.get("bytes")
        if not (_is_int(crc) and 0 <= crc < 2**32 and _is_int(nbytes)):
            raise CorruptSnapshotError(f"{snap_dir / done_file(j, k)}: bad bytes/crc32c")
        if not path.is_file():
            raise CorruptSnapshotError(f"{path}: stripe file missing")
        hdr = read_header(path)
        if hdr.file_size != nbytes:
            raise CorruptSnapshotError(
                f"{path}: {hdr.file_size} bytes, completion record says {nbytes}")
        check_stripe_metadata(hdr, step, fingerprint, j, k)
        files[name] = {"bytes": hdr.file_size, "crc32c": crc}
        headers.append(hdr)
    tensors, meta = index_of(headers, k)
    m = {
        "format": FORMAT, "id": snap_dir.name, "step": step, "created": time.time(),
        "world_size": world_size, "fingerprint": fingerprint, "nstripes": k,
        "files": files, "tensors": tensors, "meta": meta,
        # RNG states are registered state (tensors or meta) like everything else.
        "rng": "registered",
    }
    m[DIGEST] = manifest_digest(m)
    return m


def manifest_digest(m: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON (sorted keys, no spaces), digest left out.

    It catches any change to the manifest, also to what the stripes cannot vouch for
    (file sizes and CRCs, created, world_size). It is not authentication: whoever can
    write the directory can recompute it (files are private to the user: private.py).
    ValueError/RecursionError for a manifest that is not plain JSON (NaN, too deep)."""
    return digest_of(m)


def check_stripe_metadata(hdr: StripeHeader, step: int, fingerprint: str, j: int, k: int) -> None:
    """A stripe's ``__metadata__`` must name this snapshot and this stripe."""
    md = hdr.metadata
    want = {"format": FORMAT, "step": str(step), "fingerprint": fingerprint,
            "stripe": str(j), "nstripes": str(k)}
    for key, value in want.items():
        if md.get(key) != value:
            raise CorruptSnapshotError(f"{hdr.path}: header says {key} {md.get(key)!r}, "
                                       f"expected {value!r}")


def index_of(headers: list[StripeHeader], k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor index, meta entry) that stripe headers 0..k-1 describe: each tensor once,
    its pieces 1-D and covering it exactly. The manifest's index is this, and verify.py
    checks a manifest by recomputing it. CorruptSnapshotError naming the file otherwise."""
    tensors: dict[str, dict[str, Any]] = {}
    meta = None
    for j, hdr in enumerate(headers):
        name, path = stripe_file(j, k), hdr.path
        shapes = _full_shapes(hdr)
        for key, info in hdr.tensors.items():
            if key == META_KEY:
                if info.dtype != "U8" or len(info.shape) != 1:
                    raise CorruptSnapshotError(f"{path}: meta blob is {info.dtype} {info.shape}")
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
                if not (start < end <= _numel(shape) and info.shape == (end - start,)):
                    raise CorruptSnapshotError(f"{path}: piece {key!r} has shape "
                                               f"{list(info.shape)} (of {shape})")
            t = tensors.setdefault(tname, {"dtype": info.dtype, "shape": shape, "chunks": []})
            if t["dtype"] != info.dtype or t["shape"] != shape:
                raise CorruptSnapshotError(f"{path}: {key!r} disagrees with other pieces")
            t["chunks"].append([name, key, start, end])
    for tname, t in tensors.items():
        pos = 0
        for _, key, start, end in sorted(t["chunks"], key=lambda c: c[2]):
            if start != pos:
                raise CorruptSnapshotError(f"tensor {tname!r} has a gap or overlap at "
                                           f"element {pos} ({headers[0].path.parent})")
            pos = end
        if pos != _numel(t["shape"]):
            raise CorruptSnapshotError(f"tensor {tname!r} incomplete ({headers[0].path.parent})")
    if meta is None:
        raise CorruptSnapshotError(f"{headers[0].path.parent}: no meta blob in any stripe")
    return tensors, meta


def _full_shapes(hdr: StripeHeader) -> dict[str, list[int]]:
    """The ``shapes`` metadata: full shape of each tensor this stripe holds a piece of."""
    try:
        shapes = json.loads(hdr.metadata.get("shapes", "{}"))
    except (ValueError, RecursionError):
        raise CorruptSnapshotError(f"{hdr.path}: header metadata 'shapes' is not JSON") from None
    if not (isinstance(shapes, dict) and all(
            isinstance(v, list) and all(_is_int(s) and s >= 0 for s in v)
            for v in shapes.values())):
        raise CorruptSnapshotError(f"{hdr.path}: header metadata 'shapes' is malformed")
    return shapes


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _is_int(x: object) -> bool:
    return type(x) is int


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
                and old.get("files") == manifest["files"]
                and old.get(DIGEST) == manifest_digest(old)):
            return target
    except (OSError, ValueError, RecursionError):
        pass
    return private.write_json_durably(snap_dir, MANIFEST, manifest, indent=1)
