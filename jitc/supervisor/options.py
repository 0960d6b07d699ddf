"""Every knob of the supervisor, its default, its flag and environment name, and how the
durations must relate.

Precedence (docs/internals.md): an explicit flag beats the environment, which beats the
default. Only the hang timeout has an environment name (``JITC_HANG_TIMEOUT``, shared with
shim-only runs); the other knobs are flags only. All durations are float seconds named
``*_s``.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import env
from ..errors import UsageError
from ..faults import FaultSpec

# PROGRESS is sent at most every 100 ms when it changed (docs/internals.md): the
# heartbeat. Any timeout below a few heartbeats would fire on a healthy rank.
HEARTBEAT_S = 0.1

# Derived hang timeout (no --hang-timeout, no JITC_HANG_TIMEOUT): HANG_MULTIPLE times the
# HANG_PERCENTILE of observed step times, never below HANG_FLOOR_S. Same idea as NVRx's
# auto-calculated timeouts (x5 of observed), with a floor so a fast warm-up step cannot
# arm a hair trigger.
HANG_MULTIPLE = 5.0
HANG_PERCENTILE = 0.99
HANG_FLOOR_S = 60.0
# The supervisor's own hang check is a backstop behind the rank's watchdog (which reports
# richer detail): it fires this much later than the rank's would.
HANG_BACKSTOP_MARGIN_S = 2.0

# A Unix socket path must fit in sun_path (108 bytes on Linux, keep a margin).
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Options:
    command: tuple[str, ...]
    run_dir: Path
    lib: Path
    injects: tuple[FaultSpec, ...] = ()
    max_restarts: int = 3                       # --max-restarts
    hang_timeout_s: float | None = None         # --hang-timeout > JITC_HANG_TIMEOUT > derived
    grace_s: float = 10.0                       # --grace: SIGTERM -> SIGKILL
    restart_grace_s: float = 0.1                # --restart-grace: the same, snapshot published
    settle_s: float = 0.3                       # collect reports after the first failure
    query_timeout_s: float = 2.0                # QUERY -> STATE
    snapshot_timeout_s: float = 120.0           # SNAPSHOT -> every stripe's SNAPSHOT_DONE
    tick_s: float = 0.05                        # loop wake-up when nothing happens
    kill_wait_s: float = 5.0                    # after SIGKILL, wait this long for the exit
    standby: bool = True                        # --no-standby: every restart starts cold
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.command:
            raise UsageError("missing COMMAND (usage: jitc supervise [OPTIONS] -- COMMAND...)")
        if self.max_restarts < 0:
            raise UsageError(f"--max-restarts must be >= 0, got {self.max_restarts}")
        for name in ("grace_s", "restart_grace_s", "settle_s", "query_timeout_s",
                     "snapshot_timeout_s", "tick_s", "kill_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a positive number of seconds, got {value}")
        if self.hang_timeout_s is not None:
            if not (math.isfinite(self.hang_timeout_s) and self.hang_timeout_s > 0):
                raise UsageError(f"--hang-timeout must be > 0 seconds, got {self.hang_timeout_s}")
            # heartbeat < hang: a rank reports progress at most every HEARTBEAT_S.
            if self.hang_timeout_s <= 2 * HEARTBEAT_S:
                raise UsageError(f"--hang-timeout must exceed {2 * HEARTBEAT_S} s "
                                 f"(two progress heartbeats), got {self.hang_timeout_s}")
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


def resolve_hang_timeout(flag: float | None) -> float | None:
    """Flag > JITC_HANG_TIMEOUT > None (derived from step times)."""
    if flag is not None:
        return flag
    try:
        return env.get_float(env.HANG_TIMEOUT, None)
    except ValueError:
        raise UsageError(f"{env.HANG_TIMEOUT}={env.get(env.HANG_TIMEOUT)!r} is not a number") from None


def derived_hang_timeout(step_times: list[float]) -> float | None:
    """HANG_MULTIPLE x the HANG_PERCENTILE step time, at least HANG_FLOOR_S; None before
    any step time was observed (start-up, model loading: no basis to judge)."""
    if not step_times:
        return None
    ordered = sorted(step_times)
    index = min(len(ordered) - 1, math.ceil(HANG_PERCENTILE * len(ordered)) - 1)
    return max(HANG_FLOOR_S, HANG_MULTIPLE * ordered[max(index, 0)])
