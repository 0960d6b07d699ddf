"""``jitc supervise -- torchrun examples/fsdp_train.py``: FSDP2/HSDP recovered end to end.

Mesh (2, 2) on 4 gloo CPU ranks (rank = copy * 2 + shard): a failed rank's shard is
written by its copy in the other replica group and the job resumes having replayed at
most one step, bitwise equal to the fault-free run. Both copies of one shard lost: the
periodic net when enabled, else a clear stop naming the shard. Pure FSDP (1-D mesh, no
copies): the periodic net only. Small on purpose (dim 32, 12 steps): each attempt is
mostly four torch imports on a 2-core machine.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Run, assert_bitwise_equal, resumed, run_chain, supervise

pytestmark = pytest.mark.e2e
# Attempt i fires CHAIN[i] (kind, rank, step, phase, step of the JIT snapshot), on every
# rank of both replica groups (group = rank // 2): a crash in group 0, a crash in group 1
# in backward, an exception in the optimizer phase (the others finish step 6: the
# snapshot is of step 7), a hang in backward.
CHAIN = [("crash", 1, 2, "forward", 2), ("crash", 2, 4, "backward", 4),
         ("exception", 0, 6, "optimizer", 7), ("hang", 3, 9, "backward", 9)]


def assert_periodic_fallback(run: Run, shard: int, ranks: set[int]) -> None:
    """No JIT snapshot was made up for the lost shard: the job restarted from the periodic
    snapshots of step 4 (every shard's, assembled under one index)."""
    (restart,) = run.of("restart")
    assert restart["fallback"] and f"shard {shard} lost every copy" in restart["reason"], restart
    assert Path(restart["resume"]).parent.name == "snap-p-s4-stages", restart
    assert not run.of("snapshot_done")
    back = resumed(run, 1)
    assert {e["rank"] for e in back} == ranks and all(e["step"] == 4 for e in back), back


def test_every_fault_on_either_replica_group_resumes_bitwise_replaying_at_most_one(
        tmp_path, reference):
    run = run_chain(tmp_path, "chain", CHAIN)
    assert_bitwise_equal(run.state(), reference(4))


def test_both_copies_of_a_shard_lost_falls_back_to_the_periodic_net(tmp_path, reference):
    run = supervise(tmp_path, "lost", "--periodic-every", "4",
                    inject=["crash@rank=1,step=6", "crash@rank=3,step=6"])
    assert run.code == 0, run.stderr[-4000:]
    assert_periodic_fallback(run, shard=1, ranks={0, 1, 2, 3})
    assert_bitwise_equal(run.state(), reference(4))


def test_both_copies_of_a_shard_lost_without_the_net_stops_naming_it(tmp_path):
    run = supervise(tmp_path, "stop", inject=["crash@rank=1,step=6", "crash@rank=3,step=6"])
    assert run.code != 0
    (gave_up,) = run.of("gave_up")
    assert "shard 1 lost every copy" in gave_up["reason"], gave_up
    assert gave_up["reason"].startswith("cannot recover without a periodic checkpoint")
    assert not run.of("resumed") and not run.of("restart") and not run.of("snapshot_done")
    assert not run.save.exists()


def test_pure_fsdp_says_only_the_periodic_net_protects_it_and_falls_back(tmp_path, reference):
    run = supervise(tmp_path, "fsdp", "--shards", "2", "--periodic-every", "4", nproc=2,
                    inject=["crash@rank=1,step=6"])
    assert run.code == 0, run.stderr[-4000:]
    said = [line for line in run.stderr.splitlines() if "with no copies" in line]
    assert said and len(said) == 2           # once per attempt (local rank 0)
    assert "only the periodic snapshot every 4 steps protects this run" in said[0]
    assert_periodic_fallback(run, shard=1, ranks={0, 1})
    assert_bitwise_equal(run.state(), reference(2))
