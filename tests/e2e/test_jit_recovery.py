"""Just-in-time recovery, end to end on CPU/gloo: after injected faults the run finishes with
weights bitwise equal to a fault-free run, having replayed at most one step, and the event
log blames the right rank with the right kind."""
from __future__ import annotations

import pytest

from .conftest import assert_bitwise_equal, supervise

pytestmark = pytest.mark.e2e

# Each run chains one fault of every kind, one per attempt (attempt i fires CHAIN[i]).
CHAIN = [("crash", 3), ("segv", 6), ("exception", 9), ("exit", 12), ("hang", 15), ("gil-hang", 18)]
STEPS = 21
KIND_EVENT = {"crash": "crash", "segv": "signal", "exception": "exception", "exit": "exit",
              "hang": "hang", "gil-hang": "hang"}


def root_causes(run, attempt):
    return [e for e in run.of("failure_detected") if e["attempt"] == attempt and e.get("root_cause")]


@pytest.mark.parametrize("phase", ["forward", "backward", "optimizer"])
@pytest.mark.parametrize("which", ["rank0", "last"])
def test_every_fault_kind_recovers_bitwise(tmp_path, reference, which, phase):
    nproc = 2
    rank = 0 if which == "rank0" else nproc - 1
    specs = [f"{kind}@rank={rank},step={step},phase={phase},attempt={i}"
             for i, (kind, step) in enumerate(CHAIN)]
    run = supervise(tmp_path, inject=specs, nproc=nproc, steps=STEPS, max_restarts=len(CHAIN),
                    hang_timeout=2.0, timeout=600)
    assert run.code == 0, run.stderr[-4000:]
    for attempt, (kind, step) in enumerate(CHAIN):
        roots = root_causes(run, attempt)
        assert roots, f"attempt {attempt}: no root cause in {run.of('failure_detected')}"
        assert roots[0]["rank"] == rank and roots[0]["kind"] == KIND_EVENT[kind], roots
        done = [e for e in run.of("snapshot_done") if e["attempt"] == attempt]
        assert done, f"attempt {attempt}: no snapshot"
        # I1: healthy replicas stand in iteration `step` (fault before the all-reduce) or
        # `step + 1` (fault in the optimizer phase, after the all-reduce).
        expected = step + 1 if phase == "optimizer" else step
        assert done[0]["step"] == expected, done
        resumed = [e for e in run.of("resumed") if e["attempt"] == attempt + 1]
        assert {e["rank"] for e in resumed} == set(range(nproc))
        assert all(e["step"] == expected and e["replayed"] <= 1 for e in resumed), resumed
    assert run.of("finished")
    assert_bitwise_equal(run.weights(), reference(nproc, STEPS))


def test_healthy_rank_holding_the_gil_still_snapshots(tmp_path, reference):
    """Rank 0's main thread is blocked holding the GIL (like a .item() stuck behind a hung
    NCCL kernel) when rank 1 dies: the native agent writes rank 0's state regardless."""
    run = supervise(tmp_path, inject=["gil-hang@rank=0,step=7", "crash@rank=1,step=7"],
                    nproc=2, steps=12, hang_timeout=30.0)
    assert run.code == 0, run.stderr[-4000:]
    roots = root_causes(run, 0)
    assert roots and roots[0]["rank"] == 1 and roots[0]["kind"] == "crash"
    done = run.of("snapshot_done")
    assert done and done[0]["step"] == 7
    assert_bitwise_equal(run.weights(), reference(2, 12))


def test_all_replicas_lost_gives_up_cleanly(tmp_path):
    run = supervise(tmp_path, inject=["crash@rank=0,step=4", "crash@rank=1,step=4"], nproc=2, steps=10)
    assert run.code == 1, run.stderr[-3000:]
    assert run.of("gave_up") and not run.of("resumed") and not run.of("restart")
    assert "replica" in run.of("gave_up")[0].get("detail", "") + run.stderr
