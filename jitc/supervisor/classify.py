"""Failure records and the choice of root cause.

Rules (the failure report names the *first* failing rank, like elastic's
``ChildFailedError``):

1. ``peer`` reports are secondary: a collective failed *because* another rank did. They
   are logged, never blamed.
2. Among the primary reports, a non-hang failure (crash, signal, exception, exit, CUDA or
   NCCL error) beats a hang: when one rank dies, the others hang waiting for it, and a
   hang report may even arrive first. The earliest non-hang report is the root cause.
3. If every primary report is a hang (``hang``/``nccl-hang``), every rank may have
   reported one: blame the rank(s) with the least advanced ``progress``
   ``[completed, phase, marks]`` (lexicographic) — the straggler the others wait for.
   Ties blame all tied ranks, earliest report first. A report without ``progress`` counts
   as least advanced (nothing says it moved).
4. No primary report at all: the root cause is unknown (empty list).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HANG_KINDS = frozenset({"hang", "nccl-hang"})
SECONDARY_KINDS = frozenset({"peer"})


@dataclass(frozen=True)
class Failure:
    rank: int | None          # None: the job as a whole (exit without any rank report)
    kind: str
    ts: float                 # when the supervisor saw it (loop clock)
    step: int | None = None
    phase: Any = None
    progress: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # detail, signal, error, code...

    @property
    def secondary(self) -> bool:
        return self.kind in SECONDARY_KINDS

    @classmethod
    def from_message(cls, body: dict[str, Any], ts: float, rank: int | None) -> "Failure":
        progress = body.get("progress")
        if isinstance(progress, list) and all(isinstance(x, (int, float)) for x in progress):
            progress_t: tuple[int, ...] | None = tuple(int(x) for x in progress)
        else:
            progress_t = None
        extra = {k: body[k] for k in ("detail", "signal", "error", "code", "elapsed", "timeout")
                 if body.get(k) is not None}
        r = body.get("rank", rank)
        return cls(rank=r if isinstance(r, int) else rank, kind=str(body.get("kind", "exit")),
                   ts=ts, step=body.get("step"), phase=body.get("phase"),
                   progress=progress_t, extra=extra)


def root_causes(failures: list[Failure]) -> list[Failure]:
    """The root cause(s) among ``failures`` (see the module docstring); earliest first."""
    primary = sorted((f for f in failures if not f.secondary), key=lambda f: f.ts)
    if not primary:
        return []
    hard = [f for f in primary if f.kind not in HANG_KINDS]
    if hard:
        return [hard[0]]
    least = min(_progress_key(f) for f in primary)
    return [f for f in primary if _progress_key(f) == least]


def _progress_key(f: Failure) -> tuple[int, ...]:
    return f.progress if f.progress is not None else (-1,)
