"""Checking a published snapshot before anything is loaded from it (invariant I2).

``verify_manifest`` is the single gate, and it only reads: the manifest's digest and
schema; for every file its size and CRC32C (read once through mmap, checksummed by the
shim's ``jitc_crc32c``) and its header's metadata; then the tensor index recomputed from
the headers must be the manifest's, entry for entry; then the meta record must decode
(meta.py: never a pickle). Any problem, whatever is malformed and however, raises
``CorruptSnapshotError`` naming the file and what is wrong: a caller that searches for a
usable snapshot treats that as "not usable" and tries the next older one.
"""
from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any

from ..errors import CorruptSnapshotError, ShimError
from .format import FORMAT, StripeHeader, read_header
from .layout import MANIFEST, stripe_file
from .manifest import DIGEST, check_stripe_metadata, index_of, manifest_digest
from .meta import decode_state

_CRC_BLOCK = 64 * 1024 * 1024


def _crc_lib():
    """The shim, for its CRC32C. ShimError if it cannot be loaded: that says nothing about
    the snapshot, so no search may take it for "not usable" and skip on to older ones."""
    from .._shim import ffi_lib
    try:
        return ffi_lib()
    except OSError as e:
        raise ShimError(f"cannot load libjitc.so to verify checksums: {e}") from None


def file_crc32c(path: Path) -> int:
    """CRC32C of a whole file, computed natively (GIL released by cffi during the call)."""
    ffi, lib = _crc_lib()
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
    """Parse manifest.json, check its digest and its schema (no access to other files)."""
    manifest_path = Path(manifest_path)
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise CorruptSnapshotError(f"{manifest_path}: manifest missing") from None
    except OSError as e:
        raise CorruptSnapshotError(f"{manifest_path}: cannot read ({e})") from None
    try:
        m = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptSnapshotError(f"{manifest_path}: not UTF-8 ({e})") from None
    except (ValueError, RecursionError) as e:
        raise CorruptSnapshotError(f"{manifest_path}: not JSON ({e})") from None
    if not isinstance(m, dict):
        raise CorruptSnapshotError(f"{manifest_path}: manifest is not a JSON object")
    digest = m.get(DIGEST)
    if not isinstance(digest, str):
        raise CorruptSnapshotError(f"{manifest_path}: manifest has no digest (written by an "
                                   "older jitc, or damaged): not usable")
    try:
        ok = digest == manifest_digest(m)
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise CorruptSnapshotError(f"{manifest_path}: manifest digest mismatch (the manifest "
                                   "was changed after it was published)")
    _check_schema(manifest_path, m)
    return m


def _is_int(x: Any, low: int = 0) -> bool:
    return type(x) is int and x >= low


def _check_schema(path: Path, m: dict[str, Any]) -> None:
    """The fields' types; what the stripes vouch for is checked against them later."""
    def bad(what: str) -> CorruptSnapshotError:
        return CorruptSnapshotError(f"{path}: {what}")

    if m.get("format") != FORMAT:
        raise bad(f"format {str(m.get('format'))[:40]!r}, expected {FORMAT!r}")
    if not _is_int(m.get("step")):
        raise bad(f"bad step {str(m.get('step'))[:40]!r}")
    if not isinstance(m.get("fingerprint"), str):
        raise bad("fingerprint missing")
    k = m.get("nstripes")
    files = m.get("files")
    if not (_is_int(k, 1) and isinstance(files, dict) and len(files) == k):
        raise bad("files and nstripes disagree")
    if set(files) != {stripe_file(j, k) for j in range(k)}:
        raise bad(f"files are not the {k} stripes of a snapshot")
    for name, info in files.items():
        if not (isinstance(info, dict) and _is_int(info.get("bytes"))
                and _is_int(info.get("crc32c")) and info["crc32c"] < 2**32):
            raise bad(f"file entry {name!r} lacks bytes/crc32c")
    if not (m.get("world_size") is None or _is_int(m.get("world_size"), 1)):
        raise bad("bad world_size")
    if not isinstance(m.get("tensors"), dict) or not isinstance(m.get("meta"), dict):
        raise bad("no tensor index or no meta entry")


def verify_manifest(manifest_path: Path, *, checksums: bool = True) -> dict[str, Any]:
    """Full verification of a published snapshot (read-only); returns the manifest."""
    manifest_path = Path(manifest_path)
    m = read_manifest(manifest_path)
    verify_files(manifest_path.parent, m, checksums=checksums)
    return m


def verify_files(root: Path, m: dict[str, Any], *, checksums: bool = True) -> Any:
    """Check the stripe files in ``root`` against manifest ``m`` (read or built in memory,
    schema-checked); returns the decoded meta record. Read-only.

    Every file's size and CRC32C; every header's metadata (format, step, fingerprint,
    stripe); the tensor index and meta entry recomputed from the headers must equal the
    manifest's exactly (a renamed tensor, a shape, a chunk range that differs is refused,
    whatever the manifest's digest says); the meta record must decode."""
    root = Path(root)
    if checksums:
        _crc_lib()
    k, headers = m["nstripes"], []
    for j in range(k):
        name = stripe_file(j, k)
        path, info = root / name, m["files"][name]
        try:
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
        except OSError as e:
            raise CorruptSnapshotError(f"{path}: cannot read ({e.strerror})") from None
        hdr = read_header(path)
        check_stripe_metadata(hdr, m["step"], m["fingerprint"], j, k)
        headers.append(hdr)
    tensors, meta = index_of(headers, k)
    _same_index(root, m, tensors, meta)
    return _read_meta(headers[[h.path.name for h in headers].index(meta["file"])], meta)


def _canon(x: Any) -> str:
    # Strict comparison: json spells 1, 1.0 and true differently, Python's == does not.
    return json.dumps(x, sort_keys=True, separators=(",", ":"))


def _same_index(root: Path, m: dict[str, Any], tensors: dict, meta: dict) -> None:
    listed = m["tensors"]
    if (list(listed) == list(tensors) and _canon(listed) == _canon(tensors)
            and _canon(m["meta"]) == _canon(meta)):
        return
    where = f"{root / MANIFEST}: the tensor index disagrees with the stripe headers"
    for name in listed:
        if name not in tensors:
            raise CorruptSnapshotError(f"{where}: no stripe holds {str(name)[:80]!r}")
    for name, t in tensors.items():
        if name not in listed:
            raise CorruptSnapshotError(f"{where}: {name!r} is not listed")
        got = listed[name]
        if not isinstance(got, dict):
            raise CorruptSnapshotError(f"{where}: {name!r} is {str(got)[:80]}")
        for field in ("dtype", "shape", "chunks"):
            if _canon(got.get(field)) != _canon(t[field]):
                raise CorruptSnapshotError(
                    f"{where}: {name!r} has {field} {str(got.get(field))[:120]}, the stripes "
                    f"hold {str(t[field])[:120]}")
        if _canon(got) != _canon(t):
            raise CorruptSnapshotError(f"{where}: {name!r} has unexpected fields")
    if list(listed) != list(tensors):    # the registration order, which load() keeps
        raise CorruptSnapshotError(f"{where}: tensors listed in another order")
    raise CorruptSnapshotError(f"{root / MANIFEST}: meta entry {str(m['meta'])[:120]} "
                               f"disagrees with the stripe headers ({meta})")


def _read_meta(hdr: StripeHeader, meta: dict[str, Any]) -> Any:
    info = hdr.tensors[meta["key"]]
    try:
        with open(hdr.path, "rb") as f:
            f.seek(hdr.data_start + info.begin)
            blob = f.read(info.end - info.begin)
    except OSError as e:
        raise CorruptSnapshotError(
            f"{hdr.path}: cannot read the meta record ({e.strerror})") from None
    return decode_state(blob, str(hdr.path))
