"""Checks ``jitc supervise`` makes before it creates or starts anything: the command can
be executed and the run directory can be used. Each failure is a ``UsageError`` (one line,
exit 2) naming the path and the errno, instead of a traceback or an ``internal error``
after the run dir was made (issue 13).

Ownership and modes (another user's directory, one writable by others) are
``jitc/private.py``'s; this is about what the kernel would refuse: a missing or
non-executable command, a read-only file system, a directory without the permissions.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ..causes import describe
from ..errors import UsageError


def check_command(command: tuple[str, ...] | list[str], path: str | None = None) -> None:
    """``command[0]`` resolved the way exec does: a name with a ``/`` as that path, any
    other name on ``path`` (default: ``$PATH``)."""
    prog = command[0]
    if not prog:
        raise UsageError("command not found: '' (an empty program name)")
    if "/" in prog:
        if not os.path.exists(prog):
            raise UsageError(f"command not found: {prog}: {describe(errno.ENOENT)}")
        if os.path.isdir(prog) or not os.access(prog, os.X_OK):
            raise UsageError(f"command not executable: {prog}: {describe(errno.EACCES)}")
        _check_interpreter(prog)
        return
    path = os.environ.get("PATH", os.defpath) if path is None else path
    found = shutil.which(prog, path=path)
    if found is not None:
        _check_interpreter(found)
        return
    for d in path.split(os.pathsep):
        candidate = os.path.join(d or ".", prog)
        if os.path.isfile(candidate):     # on PATH, but no execute permission: exec's EACCES
            raise UsageError(f"command not executable: {candidate}: {describe(errno.EACCES)}")
    raise UsageError(f"command not found: {prog} (not on PATH)")


def _check_interpreter(prog: str) -> None:
    """A script's ``#!`` interpreter must exist too: exec fails with ENOENT otherwise, which
    names the script, not the interpreter."""
    try:
        with open(prog, "rb") as f:
            first = f.readline(256)
    except OSError:
        return                # unreadable but executable (mode 0711): exec may still work
    if not first.startswith(b"#!"):
        return
    words = first[2:].split()
    if not words:
        return
    interp = os.fsdecode(words[0])
    if not os.path.exists(interp):
        raise UsageError(f"command {prog}: its interpreter {interp} does not exist: "
                         f"{describe(errno.ENOENT)}")
    if os.path.isdir(interp) or not os.access(interp, os.X_OK):
        raise UsageError(f"command {prog}: its interpreter {interp} is not executable: "
                         f"{describe(errno.EACCES)}")


def check_run_dir(run_dir: Path) -> None:
    """The run directory, if it exists, must be readable, writable and searchable; if not,
    the nearest existing directory above it must let it be created."""
    target = Path(os.path.abspath(run_dir))
    existing = target
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return        # not a directory: Options says so, in its own words
    eff = os.access in os.supports_effective_ids
    readable = os.access(existing, os.R_OK | os.X_OK if existing == target else os.X_OK,
                         effective_ids=eff)
    if readable and os.access(existing, os.W_OK, effective_ids=eff):
        return
    code = errno.EACCES
    if readable:    # only a write is refused: a read-only mount, or the permission bits
        try:
            if os.statvfs(existing).f_flag & os.ST_RDONLY:
                code = errno.EROFS
        except OSError:
            pass
    if existing == target:
        raise UsageError(f"run directory {run_dir}: {describe(code)}")
    raise UsageError(f"run directory {run_dir} cannot be created in {existing}: "
                     f"{describe(code)}")
