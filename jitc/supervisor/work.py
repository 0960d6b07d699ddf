"""The planner's slow work, run off the supervisor's loop: one thread, one job at a time.

Each ``commands.Work`` names a job (planner/commands.py); ``run_job`` does it on the disk
of this machine and returns its result, or raises. ``Worker`` runs jobs in a thread and
hands back ``reports.WorkDone`` through a pipe the loop's selector watches, so a signal, a
disconnect or a deadline is handled while a snapshot is verified, published or merged.

torch comes in with jitc.snapshot and jitc.checkfree: imported here, on first use, never
when the supervisor starts (loop.py warms jitc.snapshot up in the background).
"""
from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections import deque
from pathlib import Path
from typing import Any

from .. import private
from ..causes import from_oserror
from ..errors import JitcError
from .planner import commands as C
from .doorbell import Doorbell
from .planner.reports import WorkDone


def run_job(job: Any, root: Path) -> Any:
    """Do one job under the snapshot root ``root``; its result (see each branch)."""
    from ..snapshot import layout
    if isinstance(job, C.Survey):
        from ..checkfree.layout import STAGES_DIR, any_checkfree_plus
        return {"checkfree_plus": any_checkfree_plus(root),
                # Stage layout records: the shards are pipeline stages (CheckFree may
                # rebuild one); without them they are FSDP shards, never rebuilt.
                "pipeline": any((root / STAGES_DIR).glob("stage-*.json")),
                "periodic": root.is_dir() and bool(layout.snapshot_dirs(root))}
    if isinstance(job, C.Prepare):
        if not root.is_dir():    # a vanished run dir is not created again
            root.mkdir(mode=0o700)
        base = layout.jit_dir(root, job.attempt, job.step)
        dirs, files = {}, {}
        for s, k in job.nstripes.items():
            dirs[s] = layout.shard_dir(base, s, job.num_shards)
            private.make_dirs(dirs[s])
            files[s] = [layout.stripe_stem(j, k) for j in range(k)]
        return {"base": base, "id": base.name.removeprefix("snap-"), "dirs": dirs, "files": files}
    if isinstance(job, C.Publish):
        from ..snapshot import publish
        manifests = {s: Path(publish(d, world_size=job.world_size)) for s, d in job.dirs.items()}
        # What a node fetching the shard checks the manifest it receives against.
        return {"manifests": manifests,
                "digests": {s: hashlib.sha256(m.read_bytes()).hexdigest()
                            for s, m in manifests.items()}}
    if isinstance(job, C.Rebuild):
        from .stages import rebuild_stage
        manifest, result = rebuild_stage(job.action, job.base, root, job.step, job.world_size)
        return {"manifest": manifest, "weights": list(result.weights), "norms": list(result.norms)}
    if isinstance(job, C.Seal):
        return {"resume": layout.write_index(job.base, job.manifests, job.world_size)}
    if isinstance(job, C.FindFallback):
        return find_fallback(root, job.num_shards)
    if isinstance(job, C.StartJob):          # several nodes: what this one lacks, first
        return fetch_all(job.fetch, root)
    raise TypeError(f"unknown work {job!r}")


def find_fallback(root: Path, num_shards: int) -> dict[str, Any] | None:
    """The newest complete snapshot on disk (what JITC_RESUME should name), or None."""
    if not root.is_dir():
        return None
    if num_shards > 1:
        from .stages import latest_complete_stages
        found = latest_complete_stages(root, num_shards)
    else:
        from ..snapshot import latest_complete
        found = latest_complete(root)
    if found is None:
        return None
    from ..snapshot import layout
    manifest = Path(found)
    if manifest.is_dir():
        manifest = layout.manifest_path(manifest)
    shards = layout.read_index(manifest) if manifest.name == layout.INDEX else {0: manifest}
    # Where its shards lie and what their manifests hash to: a node that lacks them
    # fetches them from this one (cluster/router.py).
    return {"manifest": manifest, "step": _step_of(shards[min(shards)]),
            "dirs": {s: m.parent for s, m in shards.items()},
            "digests": {s: hashlib.sha256(m.read_bytes()).hexdigest() for s, m in shards.items()},
            "index_sha256": (hashlib.sha256(manifest.read_bytes()).hexdigest()
                             if manifest.name == layout.INDEX else None)}


def fetch_all(specs: tuple[C.Fetch, ...], root: Path) -> dict[str, Any]:
    """Fetch each shard from the node that holds it, verified (cluster/transfer.py)."""
    import time

    from .cluster.transfer import fetch_index, fetch_shard
    t0, nbytes, files = time.monotonic(), 0, 0
    for f in specs:
        fetch = fetch_index if f.index else fetch_shard
        got = fetch((f.host, f.port), bytes.fromhex(f.token), root,
                    f.dir.relative_to(root).as_posix(), f.sha256)
        nbytes, files = nbytes + got.bytes, files + got.files
    return {"bytes": nbytes, "files": files, "seconds": time.monotonic() - t0,
            "sources": sorted({f"{f.host}:{f.port}" for f in specs})}


def _step_of(path: Path) -> int | None:
    try:
        step = json.loads(path.read_text()).get("step")
    except (OSError, ValueError):
        return None
    return step if isinstance(step, int) else None


def attempt(job: Any, token: int, root: Path) -> WorkDone:
    """``run_job`` as a report: its result, or the error (and OS cause) it met."""
    try:
        return WorkDone(token, run_job(job, root))
    except OSError as e:
        cause = from_oserror(_verb(job), e)
        return WorkDone(token, error=cause.text, cause=cause)
    except (JitcError, ImportError, ValueError) as e:
        return WorkDone(token, error=str(e))


def _verb(job: Any) -> str:
    return {C.Prepare: "mkdir", C.Publish: "publish", C.Seal: "publish",
            C.StartJob: "fetch"}.get(type(job), "read")


class Worker:
    """Runs jobs in one daemon thread; ``fileno()`` becomes readable when one is done."""

    def __init__(self, root: Path):
        self.root = root
        self._jobs: queue.Queue = queue.Queue()
        self._done: deque[WorkDone] = deque()
        self._bell = Doorbell()
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        return self._bell.fileno()

    def submit(self, work: C.Work) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="jitc-work", daemon=True)
            self._thread.start()
        self._jobs.put(work)

    def drain(self) -> list[WorkDone]:
        self._bell.clear()
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self) -> None:
        """A job still running finishes in its thread; its ring is then a no-op."""
        if self._thread is not None:
            self._jobs.put(None)
        self._bell.close()

    def _serve(self) -> None:
        while True:
            work = self._jobs.get()
            if work is None:
                return
            self._done.append(attempt(work.job, work.token, self.root))
            self._bell.ring()
