"""The snapshot layout: every directory and file name of a snapshot, decided here only.

docs/internals.md "Snapshot layout" is this module in prose. Everyone who names a snapshot
file asks it: the manifest publisher and the verifier, the loaders, ``jitc inspect``, the
periodic writer in ``protect()``, the supervisor, and the native writer, which is *told*
the stem of each stripe file (the SNAPSHOT message's ``files``, ``jitc_snapshot_write``'s
``stems``) and never spells one itself.

```
<root>/snap-a<attempt>-s<step>-<n>/        a snapshot the supervisor asked for (jit_dir)
<root>/snap-p<attempt>-s<step>-shard<s>/   a periodic one, written by shard s (periodic_dir)
<root>/snap-p-s<step>-stages/              periodic shards assembled by the supervisor
<snap>/stripe-<j>-of-<k>.safetensors, .done, manifest.json     one shard
<snap>/shard-<s>/...  and  <snap>/snapshot.json                several shards: the index
```

The index (``write_index``/``read_index``) lists each shard's manifest, relative to its own
directory, with a self-digest (digest.py). Its entries are judged before any is followed:
a forged index must not send a rank to a manifest outside the snapshot.

Torch-free: the supervisor imports it at start.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from .. import private
from ..errors import CorruptSnapshotError, ProtocolError
from .digest import DIGEST, digest_of

MANIFEST = "manifest.json"
INDEX = "snapshot.json"
INDEX_FORMAT = "jitc-index/1"
STRIPE_SUFFIX = ".safetensors"
DONE_SUFFIX = ".done"
# Deepest file below a root: <root>/snap-<id>/shard-<s>/<file> (tmpfiles.sweep's bound).
MAX_DEPTH = 3
# A file stem the native writer accepts (csrc/agent.cpp and csrc/api.cpp check the same).
MAX_STEM = 128
MAX_SHARDS = 1 << 20          # protocol.MAX_WORLD: a shard per rank at most
_MAX_INDEX_BYTES = 1 << 22

_STRIPE = re.compile(r"^stripe-(0|[1-9][0-9]*)-of-([1-9][0-9]*)$")
_PERIODIC = re.compile(r"^snap-p(0|[1-9][0-9]*)-s(0|[1-9][0-9]*)-shard(0|[1-9][0-9]*)$")
_SHARD_DIR = re.compile(r"^shard-(0|[1-9][0-9]*)$")
_SHARD_KEY = re.compile(r"^(0|[1-9][0-9]{0,6})$")


def stripe_stem(j: int, k: int) -> str:
    return f"stripe-{j}-of-{k}"


def stripe_file(j: int, k: int) -> str:
    return stripe_stem(j, k) + STRIPE_SUFFIX


def done_file(j: int, k: int) -> str:
    return stripe_stem(j, k) + DONE_SUFFIX


def parse_done(name: str) -> tuple[int, int] | None:
    """(j, k) of a ``stripe-<j>-of-<k>.done`` name with j < k, else None."""
    if not name.endswith(DONE_SUFFIX):
        return None
    m = _STRIPE.match(name[:-len(DONE_SUFFIX)])
    if m is None:
        return None
    j, k = int(m.group(1)), int(m.group(2))
    return (j, k) if j < k else None


def is_stripe_file(name: str) -> bool:
    """A stripe's data file by its final name (any j of k; not a temporary)."""
    return name.endswith(STRIPE_SUFFIX) and _STRIPE.match(name[:-len(STRIPE_SUFFIX)]) is not None


def is_plain_name(name: object) -> bool:
    """A name the native writer may be told (a stem): one path component, no '..'."""
    return (type(name) is str and 0 < len(name.encode("utf-8", "replace")) <= MAX_STEM
            and "/" not in name and "\0" not in name and ".." not in name)


def jit_dir(root: str | os.PathLike, attempt: int, step: int) -> Path:
    """The first free ``root/snap-a<attempt>-s<step>-<n>`` (n = 0, 1, ...)."""
    n = 0
    while (Path(root) / f"snap-a{attempt}-s{step}-{n}").exists():
        n += 1
    return Path(root) / f"snap-a{attempt}-s{step}-{n}"


def local_dir(root: str | os.PathLike, attempt: int, step: int, rank: int) -> Path:
    """The snapshot a shim-only rank writes on its own (a hang, a SIGTERM: stripe 0 of 1).
    WARNING: the shim spells this itself (csrc/agent.cpp write_local: it may run with no
    Python to ask); tests/shim/test_sigterm_shim_only.py holds the two together."""
    return Path(root) / f"snap-a{attempt}-s{step}-{rank}"


def shard_dir(snap_dir: str | os.PathLike, shard: int, num_shards: int) -> Path:
    """Where shard ``shard`` of a snapshot lives: the snapshot itself when it is the only one."""
    return Path(snap_dir) if num_shards <= 1 else Path(snap_dir) / f"shard-{shard}"


def manifest_path(d: str | os.PathLike) -> Path:
    return Path(d) / MANIFEST


def periodic_dir(root: str | os.PathLike, attempt: int, step: int, stage: int) -> Path:
    return Path(root) / f"snap-p{attempt}-s{step}-shard{stage}"


def parse_periodic(name: str) -> tuple[int, int, int] | None:
    """(attempt, step, stage) of a ``periodic_dir`` name, else None."""
    m = _PERIODIC.match(name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def assembled_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"snap-p-s{step}-stages"


def snapshot_dirs(root: str | os.PathLike) -> list[Path]:
    """The candidate snapshot directories under ``root`` (any kind above), by name; a
    missing root has none. Whether one is complete or usable is the caller's question."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d for d in root.glob("snap-*") if d.is_dir())


# -- the index of a snapshot with several shards ----------------------------------------
def write_index(snap_dir: str | os.PathLike, manifests: dict[int, Path],
                world_size: int | None) -> Path:
    """Write ``snap_dir/snapshot.json`` naming each shard's manifest (private, fsynced,
    atomic rename, then the directory fsynced); returns its path. Each manifest must lie
    strictly inside ``snap_dir`` (CorruptSnapshotError otherwise, nothing written)."""
    snap_dir = Path(snap_dir)
    if not manifests:
        raise CorruptSnapshotError(f"{snap_dir / INDEX}: an index needs at least one shard")
    shards = {str(s): _relative(snap_dir, Path(p), f"{snap_dir / INDEX}: shard {s}")
              for s, p in sorted(manifests.items())}
    index: dict[str, Any] = {"format": INDEX_FORMAT, "world_size": world_size, "shards": shards}
    _check_index(snap_dir / INDEX, index)
    index[DIGEST] = digest_of(index)
    return private.write_json_durably(snap_dir, INDEX, index, indent=1, sort_keys=True)


def read_index(path: str | os.PathLike) -> dict[int, Path]:
    """Shard -> manifest path of the index at ``path``, every entry checked (strict JSON,
    exact keys, the digest, each entry a distinct manifest strictly inside the index's
    directory, symlinks resolved). CorruptSnapshotError, one line, for anything else."""
    from ..protocol import loads     # not at the top: protocol imports this module
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        raise CorruptSnapshotError(f"{path}: index missing") from None
    except OSError as e:
        raise CorruptSnapshotError(f"{path}: cannot read the index ({e.strerror})") from None
    if len(raw) > _MAX_INDEX_BYTES:
        raise CorruptSnapshotError(f"{path}: index larger than {_MAX_INDEX_BYTES} bytes")
    try:
        index = loads(raw)           # strict: UTF-8, no NaN, int64, no duplicate keys
    except (UnicodeDecodeError, ValueError, RecursionError, ProtocolError) as e:
        raise CorruptSnapshotError(f"{path}: index is not strict JSON ({str(e)[:80]})") from None
    if not isinstance(index, dict) or set(index) != {"format", "world_size", "shards", DIGEST}:
        raise CorruptSnapshotError(f"{path}: index does not have exactly the keys format, "
                                   "world_size, shards, digest")
    if index[DIGEST] != digest_of(index):
        raise CorruptSnapshotError(f"{path}: index digest mismatch (the index was changed "
                                   "after it was written)")
    _check_index(path, index)
    return {int(s): _inside(path.parent, rel, f"{path}: shard {s}")
            for s, rel in index["shards"].items()}


def _check_index(path: Path, index: dict[str, Any]) -> None:
    if index["format"] != INDEX_FORMAT:
        raise CorruptSnapshotError(f"{path}: format {str(index['format'])[:40]!r}, "
                                   f"expected {INDEX_FORMAT!r}")
    ws = index["world_size"]
    if not (ws is None or (type(ws) is int and 1 <= ws <= MAX_SHARDS)):
        raise CorruptSnapshotError(f"{path}: bad world_size {str(ws)[:40]}")
    shards = index["shards"]
    if not (isinstance(shards, dict) and shards):
        raise CorruptSnapshotError(f"{path}: no shards")
    for s, rel in shards.items():
        if not (_SHARD_KEY.match(s) and int(s) < MAX_SHARDS and type(rel) is str):
            raise CorruptSnapshotError(f"{path}: bad entry {str(s)[:20]!r}: {str(rel)[:80]!r}")
    if len(set(shards.values())) != len(shards):
        raise CorruptSnapshotError(f"{path}: two shards name the same manifest")


def _inside(base: Path, rel: str, what: str) -> Path:
    """``base/rel`` if ``rel`` names a manifest strictly inside ``base`` (also once every
    symlink is resolved)."""
    parts = PurePosixPath(rel).parts
    if (not rel or "\0" in rel or "\\" in rel or PurePosixPath(rel).is_absolute()
            or any(p in ("..", ".") for p in rel.split("/")) or not parts
            or parts[-1] != MANIFEST or len(parts) > MAX_DEPTH):
        raise CorruptSnapshotError(f"{what}: {rel[:80]!r} is not a manifest inside the snapshot")
    target = base.joinpath(*parts)
    real_base, real = os.path.realpath(base), os.path.realpath(target)
    if os.path.commonpath([real_base, real]) != real_base or real == real_base:
        raise CorruptSnapshotError(f"{what}: {rel[:80]!r} leads outside the snapshot "
                                   f"(to {real})")
    return target


def _relative(base: Path, manifest: Path, what: str) -> str:
    rel = os.path.relpath(os.path.abspath(manifest), os.path.abspath(base))
    rel = PurePosixPath(*Path(rel).parts).as_posix()
    _inside(base, rel, what)
    return rel


# -- what a rank resumes from -----------------------------------------------------------
def resume_manifest(named: str | os.PathLike, shard: int, num_shards: int) -> Path:
    """The manifest a rank of ``shard`` loads, given what ``JITC_RESUME`` names.

    A manifest: itself (one shard). An index (or a snapshot directory holding one): its
    entry for ``shard``. A snapshot directory without an index: its manifest. A multi-shard
    job given a bare manifest is an error, except a manifest in ``<snap>/shard-<s>/``: the
    index beside the shards decides, and without one (snapshots written before indexes,
    which the supervisor still publishes that way) the same layout's ``shard-<shard>``.
    CorruptSnapshotError, one line, when the entry is missing or the index is bad."""
    named = Path(named)
    if named.is_dir():
        named = named / INDEX if (named / INDEX).exists() else manifest_path(named)
    if named.name == INDEX:
        entries = read_index(named)
        if shard not in entries:
            raise CorruptSnapshotError(f"{named}: no entry for shard {shard} (the index has "
                                       f"shards {sorted(entries)})")
        return entries[shard]
    if num_shards <= 1:
        return named
    snap = named.parent.parent
    if _SHARD_DIR.match(named.parent.name):
        if (snap / INDEX).exists():
            return resume_manifest(snap / INDEX, shard, num_shards)
        return manifest_path(shard_dir(snap, shard, num_shards))
    raise CorruptSnapshotError(f"{named}: the manifest of one shard, but this job has "
                               f"{num_shards} shards: name the snapshot's index ({INDEX})")
