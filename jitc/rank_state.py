"""Each rank's own state, kept outside the rank so that it survives the rank's death.

A snapshot is written by the healthy replicas and holds what they share; what differs
between ranks (a prefetched batch drawn from the rank's own RNG stream, a rank-0-only
``best_val_loss``) would come back as a healthy replica's value, or not at all. So every
rank writes its carried values (``Session.carry``, carried.py) itself, at every step
boundary, into its own files under the snapshot root:

    <JITC_DIR>/rank-state/rank-<r>.0, rank-<r>.1      (0700 directory, 0600 files)

Two slots, by the parity of the step a record is for, so a rank killed mid-write leaves
the other slot whole (a torn record does not decode and is skipped). A record is lines of
the meta format (jitc/snapshot/meta.py: plain data and CPU tensors, nothing that runs
code): a header ``{rank, shard, completed, provisional, names, devices, extra}``, then one
line per carried value, in ``names`` order (so an unchanged value's encoding is reused,
carried.Captures). Decoded, a record is the header plus ``values``. Besides the record for
step k written when step k begins, the rank writes one for k+1 just before its optimizer
step (``provisional``): a rank that dies in the optimizer phase, after the all-reduce, is
resumed at k+1 by its healthy peers, and what it fetched for k+1 was already fetched.

The same files serve both modes (the supervisor's ``JITC_DIR`` is ``<run-dir>/snapshots``;
shim-only it is the user's) and a restarted rank reads its own on the same node. ``extra``
holds a digest of each ``extra_state`` entry, which claims to be replicated; at a resume
each rank copies the digests of the record it resumed by into ``rank-<r>.resumed`` before
it rewrites its slots, and after the first resumed step local rank 0 compares them and
warns naming a key that differed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from . import private
from .errors import CorruptSnapshotError
from .snapshot import meta as meta_record

log = logging.getLogger("jitc")
SUBDIR = "rank-state"
_NAME = re.compile(r"^rank-(\d+)\.[01]$")


def digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _read(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        record = meta_record.decode(lines[0], str(path))
        if (type(record) is not dict or type(record.get("completed")) is not int
                or type(record.get("names")) is not list
                or len(record["names"]) != len(lines) - 1):
            raise CorruptSnapshotError(f"{path}: not a rank-state record")
        record["values"] = {name: meta_record.decode(line, str(path))
                            for name, line in zip(record["names"], lines[1:])}
    except (OSError, CorruptSnapshotError, TypeError) as e:
        log.debug("jitc: %s skipped: %s", path, e)
        return None
    return record


class RankStore:
    """This rank's two slots. ``fresh``: a run that did not resume empties them at the first
    write (a resumed one keeps the other slot: killed before its next write, the rank
    still finds the step it resumed at)."""

    def __init__(self, root: str | os.PathLike, rank: int, fresh: bool = False):
        self.dir = Path(root) / SUBDIR
        self.paths = [self.dir / f"rank-{rank}.{i}" for i in (0, 1)]
        self.fresh = fresh
        self._fds: list[int] | None = None

    def read(self) -> list[dict]:
        return [r for r in map(_read, self.paths) if r is not None]

    def open(self) -> None:
        private.make_dirs(self.dir)
        self._fds = []
        for path in self.paths:
            with private.open_private(path, "wb" if self.fresh else "ab", encoding=None):
                pass                       # created 0600 (or emptied), never through a symlink
            self._fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW))

    def write(self, completed: int, blob: bytes) -> None:
        if self._fds is None:
            self.open()
        fd = self._fds[completed % 2]
        # New bytes first, then cut the old tail: killed in between, the slot holds the new
        # record followed by old bytes, which does not decode (skipped), never an old value.
        os.pwrite(fd, blob, 0)
        os.ftruncate(fd, len(blob))


def choose(records: list[dict], step: int, rank: int) -> dict | None:
    """The record to resume ``step`` from: the one for ``step``, else the newest older one
    (with a warning: its values are that step's)."""
    exact = [r for r in records if r["completed"] == step]
    if exact:
        return exact[0]
    older = sorted((r for r in records if r["completed"] < step), key=lambda r: r["completed"])
    newer = [r["completed"] for r in records if r["completed"] > step]
    if newer:
        log.warning("jitc: rank %d: carried values of step %s ignored (resuming at step %d)",
                    rank, newer, step)
    if older:
        log.warning("jitc: rank %d: no carried values for step %d; using those of step %d",
                    rank, step, older[-1]["completed"])
        return older[-1]
    if records or newer:
        log.warning("jitc: rank %d: no carried values for step %d: session.carry() returns "
                    "the values your script computes", rank, step)
    return None


def write_resumed(root: str | os.PathLike, rank: int, attempt: int, rec: dict) -> None:
    """At a resume, before this rank's slots are rewritten: its record's ``extra`` digests
    (of the previous attempt), for local rank 0's replica check (``replica_mismatch``)."""
    d = Path(root) / SUBDIR
    private.make_dirs(d)
    final = d / f"rank-{rank}.resumed"
    tmp = d / f".{final.name}.{os.getpid()}.{os.urandom(16).hex()}.tmp"   # tmpfiles.py's form
    with private.open_private(tmp, "wb", encoding=None) as f:
        f.write(meta_record.encode({"rank": rank, "shard": rec.get("shard"), "attempt": attempt,
                                    "completed": rec["completed"], "extra": rec.get("extra")}))
    os.replace(tmp, final)


def replica_mismatch(root: str | os.PathLike, attempt: int, step: int,
                     shard: int) -> dict[str, list[int]]:
    """extra_state keys whose digest differed between the replicas of ``shard`` at ``step``
    (the records the ranks resumed by in ``attempt``): key -> ranks. Call it once every rank
    has resumed (after a step: the step's all-reduce waits for them all)."""
    by_key: dict[str, dict[str, list[int]]] = {}
    d = Path(root) / SUBDIR
    for path in sorted(d.glob("rank-*.resumed")):
        try:
            r = meta_record.decode(path.read_bytes(), str(path))
        except (OSError, CorruptSnapshotError):
            continue
        if (type(r) is not dict or r.get("attempt") != attempt or r.get("completed") != step
                or r.get("shard") != shard or type(r.get("extra")) is not dict):
            continue
        for key, value in r["extra"].items():
            by_key.setdefault(str(key), {}).setdefault(str(value), []).append(r.get("rank"))
    return {k: sorted(sum(v.values(), [])) for k, v in by_key.items() if len(v) > 1}


def record(rank: int, shard: int, completed: int, provisional: bool, values: dict[str, bytes],
           devices: dict[str, list[str]], extra: dict[str, str]) -> bytes:
    """The slot's bytes; ``values``: name -> that value's meta encoding (one line)."""
    header = meta_record.encode({"rank": rank, "shard": shard, "completed": completed,
                                 "provisional": provisional, "names": list(values),
                                 "devices": devices, "extra": extra})
    return b"\n".join([header, *values.values()])
