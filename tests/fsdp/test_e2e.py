"""``jitc supervise -- torchrun examples/fsdp_train.py``: FSDP2/HSDP recovered end to end.

Mesh (2, 2) on 4 gloo CPU ranks (rank = copy * 2 + shard): a failed rank's shard is
written by its copy in the other replica group and the job resumes having replayed at
most one step, bitwise equal to the fault-free run. Both copies of one shard lost: the
periodic net when enabled, else a clear stop naming the shard. Pure FSDP (1-D mesh, no
copies): the periodic net only. Small on purpose (dim 32, 12 steps): each attempt is
mostly four torch imports on a 2-core machine.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ..e2e.conftest import BIN, ROOT, clean_env

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "examples" / "fsdp_train.py"
STEPS = 12
# Attempt i fires CHAIN[i] (kind, rank, step, phase, step of the JIT snapshot), on every
# rank of both replica groups (group = rank // 2): a crash in group 0, a crash in group 1
# in backward, an exception in the optimizer phase (the others finish step 6: the
# snapshot is of step 7), a hang in backward.
CHAIN = [("crash", 1, 2, "forward", 2), ("crash", 2, 4, "backward", 4),
         ("exception", 0, 6, "optimizer", 7), ("hang", 3, 9, "backward", 9)]


@dataclass
class Run:
    code: int
    events: list[dict]
    stderr: str
    save: Path

    def of(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def state(self) -> dict[str, torch.Tensor]:
        return torch.load(self.save, weights_only=True)


def supervise(tmp: Path, name: str, *args: str, inject=(), nproc: int = 4,
              max_restarts: int = 2) -> Run:
    run_dir, save = tmp / name, tmp / f"{name}.pt"
    cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir), "--max-restarts",
           str(max_restarts), "--hang-timeout", "6"]
    for spec in inject:
        cmd += ["--inject", spec]
    cmd += ["--", str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc),
            "--monitor-interval", "0.1", str(SCRIPT), "--steps", str(STEPS), "--dim", "32",
            "--log-every", "0", "--save", str(save), *args]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=240,
                          cwd=ROOT)
    log = run_dir / "events.jsonl"
    events = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return Run(proc.returncode, events, proc.stderr, save)


_REFERENCE: dict = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final model and optimizer state of a fault-free run, once per world size."""
    def get(nproc: int) -> dict[str, torch.Tensor]:
        if nproc not in _REFERENCE:
            run = supervise(tmp_path_factory.mktemp("ref"), "ref", "--shards", "2", nproc=nproc)
            assert run.code == 0, run.stderr[-4000:]
            _REFERENCE[nproc] = run.state()
        return _REFERENCE[nproc]
    return get


def assert_bitwise_equal(a: dict, b: dict) -> None:
    """Model and optimizer state, bit for bit (Adam's step is a 0-d tensor)."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key].reshape(-1), b[key].reshape(-1)
        assert x.dtype == y.dtype and a[key].shape == b[key].shape, key
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), f"{key} differs"


def resumed(run: Run, attempt: int) -> list[dict]:
    return [e for e in run.of("resumed") if e["attempt"] == attempt]


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
    specs = [f"{kind}@rank={rank},step={step},phase={phase},attempt={i}"
             for i, (kind, rank, step, phase, _) in enumerate(CHAIN)]
    run = supervise(tmp_path, "chain", inject=specs, max_restarts=len(CHAIN))
    assert run.code == 0, run.stderr[-4000:]
    for attempt, (kind, rank, _, _, snap_step) in enumerate(CHAIN):
        roots = [e for e in run.of("failure_detected")
                 if e["attempt"] == attempt and e.get("root_cause")]
        assert roots and (roots[0]["rank"], roots[0]["kind"]) == (rank, kind), roots
        done = [e for e in run.of("snapshot_done") if e["attempt"] == attempt]
        assert done and done[0]["step"] == snap_step, done
        # The JIT snapshot, one per shard: shard-<s>/ under an index, never a fallback.
        assert Path(done[0]["snapshot"]).parent.name in ("shard-0", "shard-1")
        back = resumed(run, attempt + 1)
        assert {e["rank"] for e in back} == {0, 1, 2, 3}, back
        assert all(e["step"] == snap_step and e["replayed"] <= 1 for e in back), back
        # Each rank loaded its own shard's manifest.
        assert all(Path(e["manifest"]).parent.name == f"shard-{e['rank'] % 2}" for e in back)
    assert not [e for e in run.of("restart") if e.get("fallback")]
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
