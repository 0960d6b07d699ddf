"""The documented failure generator for the CheckFree convergence experiment.

Why this exists: every recovery strategy must face *the same* failures, or the
comparison measures luck. A trace is a pure function of (num_stages, slots, rate, seed):

* time is counted in *slots*, one slot = one executed training iteration (a replayed
  iteration after a rollback takes a slot too, as it takes wall-clock time);
* in every slot each stage fails independently with probability ``rate`` (the paper's
  "stage-failure rate", here per iteration instead of per hour);
* a failure happens at the *end* of its slot, after that iteration's update, and loses
  every copy of that stage's weights and optimizer state (no data-parallel replica).

Draws come from ``numpy.random.default_rng(seed)`` as one (slots, num_stages) uniform
array, so a longer trace extends a shorter one with the same seed.
"""
from __future__ import annotations

import numpy as np


def generate(num_stages: int, slots: int, rate: float, seed: int) -> list[tuple[int, ...]]:
    """For each slot, the (sorted) stages that fail at its end; mostly empty tuples."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a probability, got {rate}")
    draws = np.random.default_rng(seed).random((slots, num_stages))
    return [tuple(int(s) for s in np.flatnonzero(row < rate)) for row in draws]


def summary(trace: list[tuple[int, ...]]) -> dict:
    failures = [(k, s) for k, stages in enumerate(trace) for s in stages]
    return {"slots": len(trace), "failures": len(failures),
            "slots_with_failure": sum(1 for t in trace if t),
            "first": failures[:5]}
