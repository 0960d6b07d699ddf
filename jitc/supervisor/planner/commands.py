"""What the planner asks for: one dataclass per command, carried out by the shell
(jitc/supervisor/loop.py) in the order given.

``Work`` is slow: the shell runs it off its loop (jitc/supervisor/work.py) and reports
``reports.WorkDone`` with the same token. Everything else is quick and done at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...protocol import Msg


@dataclass(frozen=True)
class Send:
    rank: int
    type: Msg
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Emit:
    """An event for events.jsonl (and the timeline unless ``echo`` is False); ``at``: when
    it happened on the planner's clock, if not now (a failure held until its root cause is
    known is written with the time it was detected)."""
    event: str
    attempt: int
    fields: dict[str, Any]
    at: float | None = None
    echo: bool = True


@dataclass(frozen=True)
class Fetch:
    """A published shard this node lacks: ``dir`` (under the snapshot root) from the file
    server at ``host``:``port`` of the node that holds it (``token``: that server's, hex),
    its manifest's sha256 as published. ``index``: ``dir`` is a snapshot's directory and
    what is fetched its index of shards (``sha256`` the index's), after the shards."""
    dir: Path
    host: str
    port: int
    token: str
    sha256: str | None
    index: bool = False


@dataclass(frozen=True)
class StartJob:
    """Start the attempt; on several nodes, each first fetches what it lacks (``fetch``,
    filled in by the head's router: the planner does not know where files lie)."""
    attempt: int
    resume: Path | None
    fetch: tuple[Fetch, ...] = ()


@dataclass(frozen=True)
class StopJob:
    """Stop every process of the job (RELEASE, SIGTERM, grace, SIGKILL); the shell reports
    ``JobStopped``. ``published``: the snapshot is on disk, the short restart grace applies."""
    root_cause: list[int | None] | None
    kind: str | None
    published: bool = False


@dataclass(frozen=True)
class CheckRunDir:
    """Is the run directory still there? Quick (a stat): answered at once with
    ``reports.RunDirChecked``, between a recovery's outcome and the stop."""


@dataclass(frozen=True)
class Sweep:
    """Remove dead writers' temporaries under the snapshot root (jitc/tmpfiles.py)."""


@dataclass(frozen=True)
class Finish:
    code: int            # state.ExitCode
    message: str


# -- slow work: one dataclass per job, run by work.py ------------------------------------
@dataclass(frozen=True)
class Survey:
    """What the disk says before planning: whether the shards are pipeline stages (their
    layout records), whether the run uses CheckFree+, whether any earlier snapshot exists
    (the periodic net)."""


@dataclass(frozen=True)
class Prepare:
    """Create the snapshot directory of (attempt, step) and the directories of the shards
    written (shard -> its number of stripes); name their stripe files (snapshot/layout.py)."""
    attempt: int
    step: int
    num_shards: int
    nstripes: dict[int, int]


@dataclass(frozen=True)
class Publish:
    """Verify each shard's stripes and publish its manifest; ``holders``: shard -> the node
    whose ranks wrote it (None: this one), where the publishing must happen."""
    base: Path
    dirs: dict[int, Path]
    world_size: int | None
    holders: dict[int, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Rebuild:
    """Rebuild one lost stage from its neighbours' just-published snapshots."""
    action: Any               # checkfree.plan.StageAction
    base: Path
    step: int
    world_size: int | None


@dataclass(frozen=True)
class Seal:
    """Several shards: publish the job's index of their manifests (what JITC_RESUME names)."""
    base: Path
    manifests: dict[int, Path]
    world_size: int | None


@dataclass(frozen=True)
class FindFallback:
    """The newest complete snapshot already on disk, verified, every shard present."""
    num_shards: int


@dataclass(frozen=True)
class Work:
    token: int
    job: Survey | Prepare | Publish | Rebuild | Seal | FindFallback
