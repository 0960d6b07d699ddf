"""The pure parts of benchmarks/compare.py: trace generator, Young/Daly N, waste models,
lost-time split."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import compare_model as cm  # noqa: E402


def test_trace_is_seeded_increasing_in_range_and_bound_to_attempts():
    a = cm.failure_trace(300, 40, seed=11)
    assert a == cm.failure_trace(300, 40, seed=11)
    assert a != cm.failure_trace(300, 40, seed=12)
    steps = [f.step for f in a]
    assert steps == sorted(set(steps)) and all(3 <= s <= 298 for s in steps)
    assert [f.attempt for f in a] == list(range(len(a)))
    assert all(f.rank in (0, 1) for f in a)
    assert a[0].spec() == f"crash@rank={a[0].rank},step={a[0].step},attempt=0"


def test_trace_mean_gap_follows_the_mtbf():
    trace = cm.failure_trace(200_000, 50, seed=1)
    gaps = [b.step - a.step for a, b in zip(trace, trace[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(50.5, rel=0.05)   # ceil adds ~0.5


def test_trace_rejects_nonsense():
    with pytest.raises(ValueError):
        cm.failure_trace(100, 0, seed=1)


def test_young_daly_steps():
    # tau* = sqrt(2 * 0.5 * 100) = 10 s; at 0.5 s per step, 20 steps.
    assert cm.young_daly_steps(0.5, 100.0, 0.5) == 20
    assert cm.young_daly_steps(1e-6, 1.0, 10.0) == 1
    with pytest.raises(ValueError):
        cm.young_daly_steps(0.0, 1.0, 1.0)


def test_periodic_model_is_minimal_at_young_daly():
    c, m, r = 0.5, 100.0, 3.0
    best = math.sqrt(2 * c * m)
    w = lambda tau: cm.periodic_waste_per_failure(c, tau, m, r)["total"]
    assert w(best) < w(best / 2) and w(best) < w(best * 2)
    assert w(best) == pytest.approx(best + r)     # C*M/tau* = tau*/2 = sqrt(C*M/2)
    parts = cm.periodic_waste_per_failure(c, 10.0, m, r, detect_s=0.2)
    assert parts["total"] == pytest.approx(0.2 + 5.0 + 3.0 + 5.0)


def test_jit_model():
    parts = cm.jit_waste_per_failure(0.1, 0.3, 4.0, detect_s=0.05)
    assert parts["total"] == pytest.approx(4.45) and parts["replay"] == 0.1


def test_split_lost_accounts_for_every_second():
    s = cm.split_lost(100.0, 60.0, 4, detect=[0.5] * 4, checkpoint_s=2.0, restart=[5.0] * 4,
                      replayed_steps=12, step_s=0.5)
    assert s.wall == pytest.approx(10.0)
    assert (s.detect, s.checkpoint, s.restart, s.replay) == pytest.approx((0.5, 0.5, 5.0, 1.5))
    assert s.total == pytest.approx(7.5)          # the timed phases
    assert s.total + s.other == pytest.approx(s.wall)
    with pytest.raises(ValueError):
        cm.split_lost(1.0, 1.0, 0, detect=[], checkpoint_s=0, restart=[], replayed_steps=0, step_s=1)
