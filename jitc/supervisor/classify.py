"""Failure records and the choice of root cause.

What each kind means comes from the failure table (jitc/failure_kinds.def through
``jitc.failures``): its ``blame`` column drives the rules below, its ``state`` column
says whether the reporter may still write the snapshot (``Failure.trusted``). Rules (the
failure report names the *first* failing rank, like elastic's ``ChildFailedError``):

1. Secondary reports (blame NEVER: ``peer``, a collective failed *because* another rank
   did) are logged, never blamed.
2. Among the primary reports, a blame-SELF failure (crash, signal, exception, exit, CUDA or
   NCCL error) beats a hang: when one rank dies, the others hang waiting for it, and a
   hang report may even arrive first. The earliest such report is the root cause.
3. If every primary report is a hang (blame PROGRESS: ``hang``/``nccl-hang``), every rank
   may have reported one: blame the rank(s) with the least advanced ``progress``
   ``[completed, phase, marks]`` (lexicographic) — the straggler the others wait for.
   Ties blame all tied ranks, earliest report first. A report without ``progress`` counts
   as least advanced (nothing says it moved).
4. No primary report at all: the root cause is unknown (empty list).

Only fatal failures take part: a recoverable one is logged and changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import failures as table
from ..failures import HANG_KINDS, SECONDARY_KINDS, Blame, Severity

__all__ = ["HANG_KINDS", "SECONDARY_KINDS", "Failure", "root_causes"]


@dataclass(frozen=True)
class Failure:
    rank: int | None          # None: the job as a whole (exit without any rank report)
    kind: str
    ts: float                 # when the supervisor saw it (loop clock)
    step: int | None = None
    phase: Any = None
    progress: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # detail, signal, error, code...
    severity: Severity = Severity.FATAL

    @property
    def secondary(self) -> bool:
        return table.kind(self.kind).secondary

    @property
    def trusted(self) -> bool:
        """May this rank still write the snapshot (if it is not the root cause)?"""
        return table.kind(self.kind).trusted

    @property
    def fatal(self) -> bool:
        return self.severity is Severity.FATAL

    @classmethod
    def from_message(cls, body: dict[str, Any], ts: float, rank: int | None) -> "Failure":
        progress = body.get("progress")
        # Integers only: int(inf) raised OverflowError in the loop (protocol.decode now
        # drops such a frame; this stays safe on its own).
        if isinstance(progress, list) and all(type(x) is int for x in progress):
            progress_t: tuple[int, ...] | None = tuple(int(x) for x in progress)
        else:
            progress_t = None
        extra = {k: body[k] for k in ("detail", "signal", "error", "code", "elapsed", "timeout")
                 if body.get(k) is not None}
        r = body.get("rank", rank)
        kind = str(body.get("kind", table.EXIT))
        return cls(rank=r if isinstance(r, int) else rank, kind=kind,
                   ts=ts, step=body.get("step"), phase=body.get("phase"),
                   progress=progress_t, extra=extra,
                   severity=table.severity(kind, body.get("severity")))


def root_causes(failures: list[Failure]) -> list[Failure]:
    """The root cause(s) among ``failures`` (see the module docstring); earliest first."""
    primary = sorted((f for f in failures if f.fatal and not f.secondary), key=lambda f: f.ts)
    if not primary:
        return []
    hard = [f for f in primary if table.kind(f.kind).blame is not Blame.PROGRESS]
    if hard:
        return [hard[0]]
    least = min(_progress_key(f) for f in primary)
    return [f for f in primary if _progress_key(f) == least]


def _progress_key(f: Failure) -> tuple[int, ...]:
    return f.progress if f.progress is not None else (-1,)
