"""What the planner is told: one dataclass per kind of report.

Every input the recovery logic acts on arrives as one of these, with the clock as an
argument (``Planner.feed(report, now)``): a message a rank sent (whichever socket, store
or machine it came through), a process event the shell saw, or the completion of slow work
the shell ran off the loop. Nothing here reads a socket or a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...causes import Cause
from ..classify import Failure


@dataclass(frozen=True)
class Hello:
    rank: int
    pid: int | None
    shard: int = 0
    num_shards: int = 1
    world_size: int | None = None
    node: int | None = None          # the machine the rank runs on (None: this one)


@dataclass(frozen=True)
class Progress:
    rank: int
    step: Any
    completed: Any
    phase: Any
    step_time: Any = None
    hang_timeout: Any = None         # the rank's own watchdog deadline, seconds


@dataclass(frozen=True)
class Failed:
    failure: Failure                 # rank None: the job as a whole


@dataclass(frozen=True)
class Goodbye:
    rank: int


@dataclass(frozen=True)
class FaultInjected:
    rank: int
    step: Any
    kind: Any
    phase: Any


@dataclass(frozen=True)
class Resumed:
    rank: int
    step: Any
    manifest: Any


@dataclass(frozen=True)
class StateAnswer:
    rank: int
    body: dict[str, Any]             # STATE: completed, usable, nbytes, shard, ...


@dataclass(frozen=True)
class SnapshotDone:
    rank: int
    body: dict[str, Any]             # SNAPSHOT_DONE: id, stripe, ok, bytes, error, ...


@dataclass(frozen=True)
class Gone:
    """The rank's channel closed (socket EOF; a node's heartbeat lapsing, later)."""
    rank: int


@dataclass(frozen=True)
class JobStarted:
    pid: int


@dataclass(frozen=True)
class StartFailed:
    cause: Cause


@dataclass(frozen=True)
class JobExited:
    """The job's top process (the launcher) was reaped, every message it sent read."""
    returncode: int


@dataclass(frozen=True)
class JobStopped:
    """The shell carried out ``StopJob``: what the stop took and whom it killed."""
    seconds: float
    exit_code: int | None
    killed: int              # processes that needed SIGKILL
    survivors: list[Any]


@dataclass(frozen=True)
class WorkDone:
    """Slow work (commands.Work) finished off the loop: its result, or the error it met."""
    token: int
    result: Any = None
    error: str | None = None
    cause: Cause | None = None


@dataclass(frozen=True)
class Interrupted:
    signum: int
    name: str


@dataclass(frozen=True)
class RunDirChecked:
    lost: Cause | None           # None: still there


@dataclass(frozen=True)
class RunDirLost:
    cause: Cause
