"""Issue 14, items 1 and 2: shim-only recovery that wins the race against torchrun.

``LD_PRELOAD=$(jitc lib) JITC_DIR=... torchrun --max-restarts 2``, rank 0 busy 0.5 s a step
outside collectives, rank 1 killed at step 5: torchrun's monitor (its default interval) sees
rank 1 die and SIGTERMs rank 0 before rank 0's next collective can fail. Before, no snapshot
existed and the run silently started again at step 0; now rank 0 writes its snapshot on the
SIGTERM, the next attempt resumes from it, says so on stderr, and ends bitwise equal to the
fault-free run."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, ROOT, assert_bitwise_equal, clean_env

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "tests" / "e2e" / "busy_rank_train.py"
STEPS = 8


def busy_run(tmp: Path, name: str, inject: str | None):
    snaps, out, trace = tmp / f"{name}-snaps", tmp / f"{name}.pt", tmp / f"{name}.jsonl"
    lib = subprocess.run([str(BIN / "jitc"), "lib"], capture_output=True, text=True, check=True)
    env = dict(clean_env(), LD_PRELOAD=lib.stdout.strip(), JITC_DIR=str(snaps))
    if inject:
        env["JITC_INJECT"] = inject
    # torchrun's own defaults otherwise (monitor interval included).
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--max-restarts", "2", str(SCRIPT),
           "--steps", str(STEPS), "--busy", "0.5", "--save", str(out), "--trace", str(trace)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    starts = [json.loads(x)["start_step"] for x in trace.read_text().splitlines()] \
        if trace.exists() else []
    return proc, out, starts


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory):
    proc, out, starts = busy_run(tmp_path_factory.mktemp("ref"), "ref", None)
    assert proc.returncode == 0 and starts == [0], proc.stderr[-3000:]
    assert "jitc:" not in proc.stderr, proc.stderr[-3000:]   # a first start says nothing
    return torch_load(out)


def check_resumed(tmp: Path, name: str, reference) -> None:
    proc, out, starts = busy_run(tmp, name, "crash@rank=1,step=5")
    err = proc.stderr
    assert proc.returncode == 0, err[-4000:]
    assert starts == [0, 5], (starts, err[-4000:])   # resumed, not step 0
    assert "jitc: rank 0 (SIGTERM from the launcher): snapshot of step 5 written to " in err \
        or "jitc: rank 0 (peer): snapshot of step 5 written to " in err, err[-4000:]
    assert "jitc: resumed from step 5 (" in err and "at most 1 is replayed" in err, err[-4000:]
    assert "jitc:" not in proc.stdout
    assert_bitwise_equal(torch_load(out), reference)


@pytest.mark.parametrize("run", range(2))
def test_busy_rank_resumes_after_the_launchers_sigterm(tmp_path, fault_free, run):
    check_resumed(tmp_path, f"run{run}", fault_free)


@pytest.mark.slow
def test_busy_rank_resumes_in_10_of_10_runs(tmp_path, fault_free):
    for run in range(10):
        check_resumed(tmp_path, f"run{run}", fault_free)


def torch_load(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)
