"""A DDP job of 4 ranks, one of them crashing, resumes bitwise equal to the run that never
failed.

With 3 or more ranks the all-reduce's summation order of each gradient element depends on
its place in DDP's gradient bucket, and DDP rebuilds its buckets after a process's first
backward: a resumed process must reduce its first step in the rebuilt layout the fault-free
run had by then, not DDP's initial one (jitc/ddp_buckets.py). With 2 ranks the sums agree
either way, so the other end-to-end tests cannot see this."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from .conftest import BIN, ROOT, assert_bitwise_equal, clean_env

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "tests" / "e2e" / "busy_rank_train.py"
NPROC, STEPS, CRASH_STEP = 4, 16, 6


def _supervised(tmp: Path, name: str, *inject: str):
    run_dir, out = tmp / name, tmp / f"{name}.pt"
    cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir), "--hang-timeout", "3"]
    for spec in inject:
        cmd += ["--inject", spec]
    cmd += ["--", str(BIN / "torchrun"), "--nproc-per-node", str(NPROC),
            "--monitor-interval", "0.1", str(SCRIPT), "--steps", str(STEPS), "--busy", "0.1",
            "--save", str(out)]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return torch.load(out, map_location="cpu", weights_only=True), events, proc.stderr


def test_four_ranks_crash_on_rank_3_resumes_bitwise_equal(tmp_path):
    reference, _, _ = _supervised(tmp_path, "reference")
    weights, events, stderr = _supervised(tmp_path, "crash", f"crash@rank=3,step={CRASH_STEP}")
    resumed = [e for e in events if e["event"] == "resumed"]
    assert {e["rank"] for e in resumed} == set(range(NPROC)), resumed
    assert all(e["step"] == CRASH_STEP and e["replayed"] <= 1 for e in resumed), resumed
    assert "bucket" not in stderr, stderr[-3000:]      # no layout warning: it was rebuilt
    assert_bitwise_equal(reference, weights)
