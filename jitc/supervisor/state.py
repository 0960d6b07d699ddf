"""States of the supervisor, its exit codes and the result of a run.

Kept apart from the loop so the transitions can be read (and tested) in one place.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class ExitCode(enum.IntEnum):
    """Exit status of ``jitc supervise`` (also printed by ``jitc supervise --help``)."""

    SUCCESS = 0             # the job finished: exit 0 and every connected rank said GOODBYE
    JOB_FAILED = 1          # a failure that cannot be recovered (no usable replica, no fallback)
    USAGE = 2               # bad command line; nothing was started
    RESTARTS_EXHAUSTED = 3  # the job kept failing and --max-restarts was used up
    INTERRUPTED = 130       # SIGINT to the supervisor (128 + 2), after stopping the job
    TERMINATED = 143        # SIGTERM to the supervisor (128 + 15), after stopping the job


class State(enum.Enum):
    """Where the supervisor is. Transitions (anything else is a bug):

    STARTING   -> RUNNING                    job process started
    RUNNING    -> SETTLING                   first failure seen (report, EOF, job exit != 0)
    RUNNING    -> DONE                       job exited 0, every connected rank said GOODBYE
    SETTLING   -> RECOVERING                 settle window over or every rank accounted for
    RECOVERING -> STOPPING                   snapshot published, or none needed / possible
    STOPPING   -> STARTING                   job stopped, the policy allows another attempt
    STOPPING   -> DONE                       restarts exhausted or nothing to resume from
    any        -> DONE                       supervisor interrupted (after stopping the job)
    """

    STARTING = "starting"
    RUNNING = "running"
    SETTLING = "settling"
    RECOVERING = "recovering"
    STOPPING = "stopping"
    DONE = "done"


ALLOWED = {
    State.STARTING: {State.RUNNING, State.DONE},
    State.RUNNING: {State.SETTLING, State.DONE},
    State.SETTLING: {State.RECOVERING, State.DONE},
    State.RECOVERING: {State.STOPPING, State.DONE},
    State.STOPPING: {State.STARTING, State.DONE},
    State.DONE: set(),
}


@dataclass
class RunResult:
    """What ``Supervisor.run()`` returns."""

    exit_code: ExitCode
    attempts: int                               # attempts started (1 = no restart)
    message: str = ""
    root_causes: list[int | None] = field(default_factory=list)   # per failed attempt
    last_manifest: Path | None = None           # the snapshot the last attempt resumed from
