"""Pure pieces of the JIT-vs-periodic comparison (benchmarks/compare.py), kept apart so
they can be tested without running a job: the seeded failure trace, the Young/Daly
interval, the analytic waste models, and the split of lost time per failure.

Units: steps for the trace and intervals, seconds for costs.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Failure:
    step: int      # the fault fires at the start of this step (that many steps completed)
    rank: int
    attempt: int   # the k-th failure fires in the k-th attempt (restart count k)

    def spec(self) -> str:
        return f"crash@rank={self.rank},step={self.step},attempt={self.attempt}"


def failure_trace(steps: int, mtbf_steps: float, seed: int, nproc: int = 2,
                  min_step: int = 3) -> list[Failure]:
    """Failures at steps drawn from an exponential with mean ``mtbf_steps`` (inter-arrival
    times, in steps, rounded up), on a seeded uniform rank; only those in
    ``[min_step, steps - 2]``. Pure function of its arguments: every variant faces the same
    trace. Failure k is bound to attempt k, so a replayed step does not fire it twice."""
    if mtbf_steps <= 0 or steps <= 0:
        raise ValueError("steps and mtbf_steps must be positive")
    rng = random.Random(seed)
    out: list[Failure] = []
    at = 0.0
    while True:
        at += rng.expovariate(1.0 / mtbf_steps)
        step = max(min_step, math.ceil(at))
        if out and step <= out[-1].step:
            step = out[-1].step + 1
        if step > steps - 2:
            return out
        out.append(Failure(step, rng.randrange(nproc), len(out)))


def young_daly_steps(ckpt_s: float, mtbf_s: float, step_s: float) -> int:
    """Young's optimum tau* = sqrt(2*C*M), as a whole number of steps (>= 1)."""
    if min(ckpt_s, mtbf_s, step_s) <= 0:
        raise ValueError("costs and times must be positive")
    return max(1, round(math.sqrt(2.0 * ckpt_s * mtbf_s) / step_s))


def periodic_waste_per_failure(ckpt_s: float, tau_s: float, mtbf_s: float, restart_s: float,
                               detect_s: float = 0.0) -> dict:
    """Young/Daly, per failure: checkpoints written per MTBF (C*M/tau), half an interval
    replayed on average, plus detection and restart. (The waste *fraction* is this / M:
    C/tau + (tau/2 + R)/M.)"""
    parts = {"detect": detect_s, "checkpoint": ckpt_s * mtbf_s / tau_s,
             "restart": restart_s, "replay": tau_s / 2.0}
    return dict(parts, total=sum(parts.values()))


def jit_waste_per_failure(step_s: float, snapshot_s: float, restart_s: float,
                          detect_s: float = 0.0) -> dict:
    """JIT: at most one step replayed, one snapshot written after the failure, restart."""
    parts = {"detect": detect_s, "checkpoint": snapshot_s, "restart": restart_s,
             "replay": step_s}
    return dict(parts, total=sum(parts.values()))


@dataclass
class LostSplit:
    """Lost time per failure. ``total`` is the sum of the phases timed from the logs
    (detection, checkpoint, restart, replay); ``wall`` is the run's wall minus the fault-free
    unprotected wall, per failure, and ``other`` = wall - total: what no phase accounts for
    (slower steps after a restart, a periodic save's background cost, and run-to-run noise,
    which on a shared 2-core machine is several seconds a run: it may be negative)."""
    detect: float
    checkpoint: float
    restart: float
    replay: float
    other: float
    total: float
    wall: float

    def as_dict(self) -> dict:
        return asdict(self)


def split_lost(wall_s: float, clean_wall_s: float, failures: int, *, detect: list[float],
               checkpoint_s: float, restart: list[float], replayed_steps: int,
               step_s: float) -> LostSplit:
    """Per-failure split. ``detect``/``restart`` hold one value per failure;
    ``checkpoint_s`` is all checkpoint time of the run (periodic: blocking saves, amortized
    over the failures; JIT: the snapshots); replay = replayed steps x step time."""
    if failures <= 0:
        raise ValueError("no failures to split over")
    wall = (wall_s - clean_wall_s) / failures
    parts = {"detect": sum(detect) / failures, "checkpoint": checkpoint_s / failures,
             "restart": sum(restart) / failures, "replay": replayed_steps * step_s / failures}
    total = sum(parts.values())
    return LostSplit(**parts, other=wall - total, total=total, wall=wall)
