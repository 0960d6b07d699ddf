"""Helpers of the FSDP2/HSDP end-to-end tests: ``jitc supervise -- torchrun
examples/fsdp_train.py`` on 4 gloo CPU ranks, its event log, and the fault-free reference.

Shared by test_e2e.py and test_e2e_kinds.py: one reference run per world size for the
whole session, and one reading of a chain of faults (one per attempt) from the event log.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ..e2e.conftest import BIN, ROOT, clean_env
from ..e2e.test_jit_recovery import KIND_EVENT

SCRIPT = ROOT / "examples" / "fsdp_train.py"
STEPS = 12


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



def run_chain(tmp: Path, name: str, chain: list[tuple]) -> Run:
    """Run the job with fault ``chain[i]`` = (kind, rank, step, phase, step of the JIT
    snapshot) fired in attempt i; check that each was blamed on its rank with its kind, that
    a JIT snapshot of one shard per directory was written of the expected step, and that
    all four ranks resumed from it, each from its own shard, replaying at most one step."""
    specs = [f"{kind}@rank={rank},step={step},phase={phase},attempt={i}"
             for i, (kind, rank, step, phase, _) in enumerate(chain)]
    run = supervise(tmp, name, inject=specs, max_restarts=len(chain))
    assert run.code == 0, run.stderr[-4000:]
    for attempt, (kind, rank, _, _, snap_step) in enumerate(chain):
        roots = [e for e in run.of("failure_detected")
                 if e["attempt"] == attempt and e.get("root_cause")]
        assert roots and (roots[0]["rank"], roots[0]["kind"]) == (rank, KIND_EVENT[kind]), roots
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
    return run
