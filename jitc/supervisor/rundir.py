"""Noticing that the run directory was deleted (or swapped) under a running supervisor.

Everything of a run lives there: the socket the next attempt's ranks connect to, the
snapshot root, the event log. Once it is gone no restart can work (issue 13: a deleted run
dir gave four futile attempts, then "restarts exhausted"), so the loop stats it every
``CHECK_EVERY_S`` and stops the job with the reason. One ``stat`` a quarter second is
nothing beside the loop's own wake-ups.

The event log's file went with the directory: the supervisor keeps writing to its open
descriptor (the lines reach an unlinked file), and its timeline on stderr says so.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..causes import Cause, describe, errno_name

CHECK_EVERY_S = 0.25


class RunDirWatch:
    """Remembers which directory ``path`` was at the start (device and inode)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(os.path.abspath(path))
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)

    def lost(self) -> Cause | None:
        """Why the run directory can no longer be used, or None while it is the same."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            return Cause(f"run directory {self.path} vanished: {describe(e.errno)}",
                         errno_name(e.errno), str(self.path))
        if (st.st_dev, st.st_ino) != self._ident:
            return Cause(f"run directory {self.path} was replaced by another directory "
                         "(moved away or deleted and made again)", None, str(self.path))
        return None
