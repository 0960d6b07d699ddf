"""Which directories jitc trusts, and how it creates its own (DESIGN.md, "Trust").

jitc keeps a model's weights and optimizer state on disk and takes commands over a socket
in the run directory. A directory that another user owns, can write into, or has swapped
in through a symlink of their own lets that user read the state, replace the snapshot jitc
resumes from, or put their own socket where the ranks connect (issue 13: a run dir created
by another user with mode 0777 was accepted, its socket swapped, and both root ranks wrote
their state where the attacker's SNAPSHOT command said).

The one rule, used by the supervisor for the run directory and the snapshot root and by
``protect()`` for ``JITC_DIR``: the directory must be owned by the user running jitc and
not writable by group or others, and every symlink on the way to it must be owned by that
user or by root. What jitc creates is private whatever the umask: directories 0700, files
0600 (an explicit mode at creation; the umask can only take bits away).

The directories above the checked one are the user's to keep safe (a world-writable,
non-sticky parent lets others rename entries in it): jitc does not walk up the tree.
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import IO

from .errors import UsageError

DIR_MODE = 0o700
FILE_MODE = 0o600
_MAX_SYMLINKS = 40          # as the kernel's ELOOP limit


class UntrustedPathError(UsageError):
    """A directory jitc would use is not private to this user: exit 2, one line."""


def _owner(uid: int) -> str:
    try:
        import pwd
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _resolve(path: str, what: str, hops: list[int]) -> str:
    """``path`` (absolute) with every symlink followed, each one's owner checked. A part
    that does not exist yet ends the walk; the rest is appended as written."""
    uid = os.geteuid()
    real = "/"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if part == "..":
            real = os.path.dirname(real)
            continue
        candidate = os.path.join(real, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return os.path.join(candidate, *parts[i + 1:])
        if not stat.S_ISLNK(st.st_mode):
            real = candidate
            continue
        if st.st_uid not in (uid, 0):
            raise UntrustedPathError(
                f"{what} {path} is reached through the symlink {candidate}, owned by "
                f"{_owner(st.st_uid)}, not by you ({_owner(uid)}): refusing it")
        hops[0] += 1
        if hops[0] > _MAX_SYMLINKS:
            raise UntrustedPathError(f"{what} {path}: too many levels of symlinks")
        target = os.readlink(candidate)
        real = _resolve(target if target.startswith("/") else os.path.join(real, target),
                        what, hops)
    return real


def check_dir(path: str | os.PathLike, what: str) -> Path:
    """The real path of the existing directory ``path`` if it is private to this user;
    else ``UntrustedPathError`` naming the reason. ``what`` names it in the message
    (``run directory``, ``JITC_DIR``...)."""
    shown = os.fspath(path)
    real = _resolve(os.path.abspath(shown), what, [0])
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise UntrustedPathError(f"{what} {shown} does not exist") from None
    except OSError as e:
        raise UntrustedPathError(f"{what} {shown}: {os.strerror(e.errno)}") from None
    uid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedPathError(f"{what} {shown} is not a directory")
    if st.st_uid != uid:
        raise UntrustedPathError(
            f"{what} {shown} is owned by {_owner(st.st_uid)}, not by you ({_owner(uid)}): "
            "refusing it; use a directory of your own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = {0o022: "group and others", 0o020: "group", 0o002: "others"}[st.st_mode & 0o022]
        raise UntrustedPathError(
            f"{what} {shown} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"refusing it; chmod go-w {shown} or use a private directory")
    return Path(real)


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with mode 0700 for every level it creates (``Path.mkdir(parents=True)``
    gives the parents the umask's mode). Existing levels are left as they are."""
    path = Path(path)
    missing = []
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
    return path


def make_dir(path: str | os.PathLike, what: str) -> Path:
    """``make_dirs(path)`` (after checking the symlinks on the way), then ``check_dir``
    it. Returns its real path."""
    shown = os.fspath(path)
    make_dirs(_resolve(os.path.abspath(shown), what, [0]))
    return check_dir(shown, what)


def open_private(path: str | os.PathLike, mode: str = "w", *,
                 encoding: str | None = "utf-8") -> IO:
    """Open ``path`` for writing as a 0600 file: created (or truncated, ``w``; appended,
    ``a``) without following a symlink at its name. Binary modes take ``encoding=None``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    flags |= os.O_APPEND if mode.startswith("a") else os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)   # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
    except BaseException:
        os.close(fd)
        raise


def require_snapshot_root(path: str | os.PathLike, what: str) -> Path:
    """For ``protect()`` in a rank: ``make_dir`` the snapshot root, or print the reason as
    one line and exit 2 (the same refusal the supervisor makes; a traceback in every rank
    would bury it)."""
    try:
        return make_dir(path, what)
    except UntrustedPathError as e:
        print(f"jitc: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def write_json_durably(directory: Path, name: str, obj: object, **dump: object) -> Path:
    """``directory/name`` holding ``obj`` as JSON, private (0600) and durable: written to a
    temporary (jitc/tmpfiles.py's pattern, so a killed writer's is swept), fsynced, renamed
    into place, then the directory fsynced. A reader sees the old file or the whole new one."""
    import json
    import uuid
    target = directory / name
    tmp = directory / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open_private(tmp) as f:
            json.dump(obj, f, **dump)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target
