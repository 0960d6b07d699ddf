"""Temporary files that a dead writer left in the snapshot root, removed.

Every file of a snapshot is written under a temporary name and renamed into place, so a
writer killed mid-write (SIGKILL, OOM, a node lost) leaves its temporary behind and nothing
else: a partial file never carries a name a loader reads (stripes, ``.done`` records and
manifests are found by their final names only). Left alone, the temporaries would fill the
disk one failure at a time. Two spellings exist, both with the writer's pid:

- ``<name>.tmp.<pid>``: the native stripe writer (``tmp_name`` in csrc/snapshot/writer.cpp);
- ``.<name>.<pid>.<32 hex>.tmp``: Python's atomic writers (the manifest publisher,
  checkfree's stage layout records).

``sweep`` removes those whose pid is not a live process. Whoever owns the snapshot root
calls it when no writer of a previous attempt can still be running: the supervisor at start
and before each restart (the job is stopped), ``protect()``'s resume scan in shim-only mode.
A live pid (or one that cannot be checked) keeps its file: it may be writing it now.

WARNING: pids are those of this machine's pid namespace; a snapshot root shared with
writers in another namespace (containers sharing one host directory) is not supported.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .snapshot.layout import MAX_DEPTH

_NATIVE = re.compile(r"^.+\.tmp\.(\d+)$")
_PYTHON = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{32}\.tmp$")


def writer_pid(name: str) -> int | None:
    """The pid in a temporary file's name, None if the name is not a writer's temporary."""
    m = _NATIVE.match(name) or _PYTHON.match(name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """A process that can still write: not gone, and not a zombie (the supervisor reaps
    the orphans of a stopped job only once a second)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:         # EPERM: someone else's live process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def sweep(root: str | os.PathLike) -> list[Path]:
    """Remove the dead writers' temporaries under ``root`` (not following symlinks);
    returns what was removed. A missing root is empty."""
    removed: list[Path] = []
    _sweep(Path(root), MAX_DEPTH, removed)
    return removed


def _sweep(d: Path, depth: int, removed: list[Path]) -> None:
    try:
        entries = list(os.scandir(d))
    except OSError:
        return
    for e in entries:
        try:
            mode = e.stat(follow_symlinks=False).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            if depth > 1:
                _sweep(Path(e.path), depth - 1, removed)
            continue
        pid = writer_pid(e.name)
        if pid is None or not stat.S_ISREG(mode) or pid_alive(pid):
            continue
        try:
            os.unlink(e.path)
        except FileNotFoundError:   # another sweeper (a rank of the same restart) won
            continue
        except OSError:
            continue
        removed.append(Path(e.path))
