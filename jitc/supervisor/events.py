"""The run's event log (``<run-dir>/events.jsonl``) and its human timeline on stderr.

The JSON lines are the machine-readable record benchmarks and tests read (schema in
DESIGN.md: ``ts``, ``event``, ``attempt`` always; ``rank``, ``step``, ``kind`` where they
apply). Each line is flushed as written so a supervisor killed with SIGKILL still leaves
every event it had seen. The timeline is a rendering of the same records.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from .. import private
from ..causes import describe

NAMES = frozenset({
    "start", "fault_injected", "failure_detected", "snapshot_requested", "snapshot_done",
    "stage_rebuilt", "job_stopped", "restart", "resumed", "finished", "gave_up",
    "node_joined", "node_lost", "state_fetched",
})


def _who(rec: dict[str, Any]) -> str:
    rank, node = rec.get("rank"), rec.get("node")
    who = "job" if rank is None else f"rank {rank}"
    return who if node is None else f"{who} on node {node}"


def _where(rec: dict[str, Any]) -> str:
    who = _who(rec)
    step = rec.get("step")
    return who if step is None else f"{who} at step {step}"


def _ranks(ranks: list[Any] | None) -> str:
    if not ranks:
        return "unknown"
    return ", ".join("job" if r is None else f"rank {r}" for r in ranks)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_line(rec: dict[str, Any], t0: float) -> str:
    """One short timeline line, e.g. ``jitc: [  12.34s] attempt 0: rank 1 crash at step 25``."""
    ev = rec["event"]
    kind = rec.get("kind")
    if ev == "start":
        text = (f"node {rec['node']}: " if rec.get("node") is not None else "") + \
            f"started pid {rec.get('pid')}" + (
            f", resuming from {rec['resume']}" if rec.get("resume") else "")
    elif ev == "fault_injected":
        text = f"injected {kind} into {_where(rec)}"
    elif ev == "failure_detected":
        text = f"{_who(rec)} {kind}" + (f" at step {rec['step']}" if rec.get("step") is not None else "")
        detail = rec.get("signal") or rec.get("error") or (
            f"exit code {rec['exit_code']}" if rec.get("exit_code") is not None else None)
        if detail:
            text += f" ({detail})"
        if rec.get("root_cause"):
            text += " (root cause)"
        elif rec.get("secondary"):
            text += " (secondary)"
        elif rec.get("severity") == "recoverable":
            text += " (recoverable: the job goes on)"
    elif ev == "snapshot_requested":
        text = (f"snapshot of step {rec.get('step')}: rank {rec.get('rank')} writes stripes "
                f"{rec.get('stripes')} of {rec.get('nstripes')}")
        if rec.get("reassigned_from") is not None:
            text += f" (reassigned from rank {rec['reassigned_from']}" + (
                f": {rec['error']})" if rec.get("error") else ")")
    elif ev == "snapshot_done":
        text = (f"snapshot of step {rec.get('step')} published: {_size(rec.get('bytes') or 0)} in "
                f"{rec.get('seconds', 0):.2f}s ({rec.get('snapshot')})")
    elif ev == "stage_rebuilt":
        text = f"stage {rec.get('stage')} at step {rec.get('step')} "
        if rec.get("method") == "replica":
            text += "restored from its surviving replica"
        else:
            src = ", ".join(str(s) for s in rec.get("neighbours") or [])
            text += f"rebuilt by {rec.get('method')} from stage{'s' if ',' in src else ''} {src}"
            if rec.get("weights") and len(rec["weights"]) > 1:
                text += " (weights " + "/".join(f"{w:.3f}" for w in rec["weights"]) + ")"
    elif ev == "job_stopped":
        text = f"job stopped in {rec.get('seconds', 0):.2f}s"
        if rec.get("root_cause"):
            text += f"; root cause: {_ranks(rec['root_cause'])}"
    elif ev == "restart":
        text = "restarting" + (f" from step {rec['step']}" if rec.get("step") is not None else " from scratch")
        if rec.get("reason"):
            text += f" (an older snapshot: {rec['reason']})"
    elif ev == "resumed":
        text = f"resumed at step {rec.get('step')} (replayed {rec.get('replayed')})"
    elif ev == "finished":
        text = "finished"
    elif ev == "gave_up":
        text = f"gave up: {rec.get('reason')}"
    elif ev == "node_joined":
        text = f"node {rec.get('node')} joined" + (
            f" (again: {rec['detail']})" if rec.get("detail") else "")
    elif ev == "node_lost":
        text = f"node {rec.get('node')} lost: {rec.get('reason')}"
    elif ev == "state_fetched":
        text = (f"fetched {_size(rec.get('bytes') or 0)} of snapshot state from node "
                f"{rec.get('source')} in {rec.get('seconds', 0):.2f}s")
    else:
        text = ev
    return f"jitc: [{rec['ts'] - t0:7.2f}s] attempt {rec['attempt']}: {text}"


class EventLog:
    """Appends events to events.jsonl and echoes them as timeline lines."""

    def __init__(self, path: Path, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.time):
        self.path = path
        self._file = private.open_private(path, "a")   # 0600: it names paths and ranks
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        self.t0 = clock()
        self._write_failed = False

    def emit(self, event: str, attempt: int, *, echo: bool = True, ts: float | None = None,
             **fields: Any) -> dict[str, Any]:
        """Write one event now and echo it as a timeline line unless ``echo=False``."""
        rec = self.record(event, attempt, ts=ts, **fields)
        self.write(rec, echo=echo)
        return rec

    def record(self, event: str, attempt: int, *, ts: float | None = None,
               **fields: Any) -> dict[str, Any]:
        """An event stamped now (or at ``ts``) but not yet written: ``write()`` it later,
        e.g. a failure report held until the root cause is known."""
        if event not in NAMES:
            raise ValueError(f"unknown event {event!r}")
        rec: dict[str, Any] = {"ts": self._clock() if ts is None else ts, "event": event,
                               "attempt": attempt}
        rec.update({k: v for k, v in fields.items() if v is not None or k in ("rank",)})
        return rec

    def write(self, rec: dict[str, Any], *, echo: bool = True) -> None:
        try:
            self._file.write(json.dumps(rec, default=str) + "\n")
            self._file.flush()
        except OSError as e:     # a full disk: the job must not die of its log; say it once
            if not self._write_failed:
                self._write_failed = True
                self._say(f"cannot write {self.path}: {describe(e.errno)}; "
                          "events go to this timeline only until it can")
        if echo:
            self.echo(rec)

    def echo(self, rec: dict[str, Any], **overrides: Any) -> None:
        try:
            print(format_line({**rec, **overrides}, self.t0), file=self._stream, flush=True)
        except (OSError, ValueError):   # stderr closed: the JSON log is the record
            pass

    def _say(self, text: str) -> None:
        try:
            print(f"jitc: {text}", file=self._stream, flush=True)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:          # the last flush on a full disk: reported by write()
            pass


def read_events(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
