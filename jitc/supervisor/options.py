"""Every knob of the supervisor, its default, its flag and environment name, and how the
durations must relate.

Precedence (docs/internals.md): an explicit flag beats the environment, which beats the
default. The limits a rank obeys too (hang timeout and its rule, grace, snapshot timeout)
are ``jitc.limits.Limits``: their environment names (``JITC_HANG_TIMEOUT``,
``JITC_HANG_FLOOR``, ``JITC_HANG_MULTIPLE``, ``JITC_GRACE``, ``JITC_SNAPSHOT_TIMEOUT``) are
the ones a shim-only run uses, and the supervisor hands the resolved values to the job
(``Options.limits.to_env()``), so the shim never keeps limits of its own. The other knobs
are flags only. All durations are float seconds named ``*_s``.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..faults import FaultSpec
from ..limits import HEARTBEAT_S, Limits

__all__ = ["HEARTBEAT_S", "Options", "default_run_dir"]

# A Unix socket path must fit in sun_path (108 bytes on Linux, keep a margin).
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Options:
    command: tuple[str, ...]
    run_dir: Path
    lib: Path
    injects: tuple[FaultSpec, ...] = ()
    max_restarts: int = 3                       # --max-restarts
    # The limits the ranks obey as well: None here = not given (the environment, else the
    # default, decides); after construction each holds the value in force.
    hang_timeout_s: float | None = None         # --hang-timeout > JITC_HANG_TIMEOUT > derived
    hang_floor_s: float | None = None           # JITC_HANG_FLOOR > 30
    hang_multiple: float | None = None          # JITC_HANG_MULTIPLE > 5
    grace_s: float | None = None                # --grace > JITC_GRACE > 10: SIGTERM -> SIGKILL
    restart_grace_s: float = 0.1                # --restart-grace: the same, snapshot published
    settle_s: float = 0.3                       # collect reports after the first failure
    query_timeout_s: float = 2.0                # QUERY -> STATE
    # --snapshot-timeout > JITC_SNAPSHOT_TIMEOUT > 120: the bound each rank's writer obeys
    snapshot_timeout_s: float | None = None
    tick_s: float = 0.05                        # loop wake-up when nothing happens
    kill_wait_s: float = 5.0                    # after SIGKILL, wait this long for the exit
    standby: bool = True                        # --no-standby: every restart starts cold
    extra_env: dict[str, str] = field(default_factory=dict)
    # Several nodes (cluster/): what the torchrun command says of them (None: one node),
    # and how long a node may stay silent / a node may take to (re)join.
    topology: Any = None
    node_timeout_s: float = 5.0                 # --node-timeout: heartbeat silence -> lost
    join_timeout_s: float = 120.0               # --join-timeout: every node there by then
    limits: Limits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in fields(Limits)}
        limits = Limits.from_env(**given)
        object.__setattr__(self, "limits", limits)
        for name in given:
            object.__setattr__(self, name, getattr(limits, name))
        if not self.command:
            raise UsageError("missing COMMAND (usage: jitc supervise [OPTIONS] -- COMMAND...)")
        if self.max_restarts < 0:
            raise UsageError(f"--max-restarts must be >= 0, got {self.max_restarts}")
        for name in ("restart_grace_s", "settle_s", "query_timeout_s", "tick_s", "kill_wait_s",
                     "node_timeout_s", "join_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a positive number of seconds, got {value}")
        # tick < settle <= query <= snapshot: each wait must see several loop passes,
        # and a later phase must not be shorter than the one before it.
        if not self.tick_s < self.settle_s <= self.query_timeout_s <= self.snapshot_timeout_s:
            raise UsageError("timeouts must satisfy tick < settle <= query <= snapshot "
                             f"({self.tick_s}, {self.settle_s}, {self.query_timeout_s}, "
                             f"{self.snapshot_timeout_s})")
        parent = self.run_dir.parent
        if not parent.is_dir():
            raise UsageError(f"run directory parent {parent} does not exist")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UsageError(f"run directory {self.run_dir} exists and is not a directory")

    @property
    def snapshot_wait_s(self) -> float:
        """How long recovery waits for the writers' answers (longer than they may take)."""
        return self.limits.snapshot_wait_s

    @property
    def snapshot_root(self) -> Path:
        return self.run_dir / "snapshots"

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def socket_path(self) -> Path:
        """``<run-dir>/jitc.sock``, or a short path under the temp dir when that is too long
        for sun_path."""
        path = self.run_dir.resolve() / "jitc.sock"
        if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
            return path
        return Path(tempfile.mkdtemp(prefix="jitc-")) / "jitc.sock"


def default_run_dir(now: float | None = None) -> Path:
    """``./jitc-runs/<YYYYmmdd-HHMMSS>-<pid>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("jitc-runs") / f"{stamp}-{os.getpid()}"
