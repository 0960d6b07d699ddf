"""Why an operation on a file failed, as the user needs to read it: the errno's name and
the path (issue 13: a full disk ended with "every replica of shard 0 failed during the
snapshot" and ENOSPC appeared nowhere).

One spelling for both languages: ``<what> <path>: <ERRNO> (<message>)``, e.g.
``write /run/snapshots/snap-a0-s5-0/stripe-0-of-1.safetensors.tmp.812: ENOSPC (No space
left on device)``. The native writer builds it (``os_error`` in csrc/snapshot/writer.cpp)
and sends it in SNAPSHOT_DONE's ``error``; ``parse`` reads the errno name and the path back
out of it for the event log's ``errno`` and ``path`` fields.
"""
from __future__ import annotations

import errno as _errno
import os
import re
from dataclasses import dataclass

_TEXT = re.compile(r"^(?P<what>[\w-]+) (?P<path>.+): (?P<errno>E[A-Z0-9]+) \([^()]*\)$")


@dataclass(frozen=True)
class Cause:
    """An OS-level reason: ``text`` is the whole line, ``errno`` its name (or None)."""

    text: str
    errno: str | None = None
    path: str | None = None

    def fields(self) -> dict[str, str | None]:
        """The event-log fields this cause adds."""
        return {"errno": self.errno, "path": self.path}


def errno_name(code: int | None) -> str:
    return _errno.errorcode.get(code, f"errno {code}") if code is not None else "error"


def describe(code: int | None) -> str:
    """``ENOSPC (No space left on device)``."""
    return f"{errno_name(code)} ({os.strerror(code) if code is not None else 'unknown'})"


def from_oserror(what: str, e: OSError, path: str | os.PathLike | None = None) -> Cause:
    """The cause of ``e``, raised while doing ``what`` (``open``, ``mkdir``...) to ``path``
    (default: the path the error names)."""
    where = os.fspath(path) if path is not None else (e.filename or "")
    return Cause(f"{what} {where}: {describe(e.errno)}",
                 errno_name(e.errno) if e.errno is not None else None, str(where) or None)


def parse(text: object) -> Cause | None:
    """The cause an error text gives; None for no text. A text that names no OS error
    (e.g. ``step mismatch: ...``) is a cause without an errno."""
    if not isinstance(text, str) or not text:
        return None
    m = _TEXT.match(text)
    if m is None:
        return Cause(text)
    return Cause(text, m.group("errno"), m.group("path"))
