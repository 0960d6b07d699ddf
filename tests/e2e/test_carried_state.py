"""State a step does not own, end to end: a nanoGPT-shaped loop (tests/e2e/nanogpt_like.py)
that prefetches the next iteration's first micro-batch at the end of each iteration and
keeps ``best_val_loss`` and its eval history on rank 0 only. With ``session.carry`` it
resumes bitwise after every fault kind, on rank 0 itself (whose values no other rank holds);
without it the resumed run diverges."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from .conftest import BIN, Run, assert_bitwise_equal, clean_env

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("nanogpt_like.py")
STEPS, FAULT_STEP = 12, 6          # evals at 0, 4, 8: rank 0 fails after two of them
KIND_EVENT = {"crash": "crash", "segv": "signal", "exception": "exception", "exit": "exit",
              "hang": "hang", "gil-hang": "hang"}


def run_nanogpt(tmp: Path, name: str, inject=(), script_args=(), timeout=240):
    run_dir, out, report = tmp / name, tmp / f"{name}.pt", tmp / f"{name}-report"
    cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir), "--max-restarts", "2",
           "--hang-timeout", "2"]
    for spec in inject:
        cmd += ["--inject", spec]
    cmd += ["--", str(BIN / "torchrun"), "--nproc-per-node", "2", "--monitor-interval", "0.1",
            str(SCRIPT), "--steps", str(STEPS), "--save", str(out), "--report", str(report),
            "--quiet", *script_args]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    events_file = run_dir / "events.jsonl"
    events = ([json.loads(line) for line in events_file.read_text().splitlines()]
              if events_file.exists() else [])
    reports = {r: json.loads((report / f"rank-{r}.json").read_text())
               for r in (0, 1) if (report / f"rank-{r}.json").exists()}
    return Run(proc.returncode, events, out, proc.stderr, run_dir), reports


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory):
    run, reports = run_nanogpt(tmp_path_factory.mktemp("nanogpt"), "reference")
    assert run.code == 0, run.stderr[-3000:]
    assert [e[0] for e in reports[0]["evals"]] == [0, 4, 8] and reports[1]["evals"] == []
    return run.weights(), reports


def assert_resumed_once(run: Run, step: int) -> None:
    resumed = [e for e in run.of("resumed") if e["attempt"] == 1]
    assert {e["rank"] for e in resumed} == {0, 1}, run.of("resumed")
    assert all(e["step"] == step and e["replayed"] <= 1 for e in resumed), resumed


KINDS = [("crash", "forward"), ("exception", "optimizer"), ("hang", "forward"),
         pytest.param("segv", "backward", marks=pytest.mark.slow),
         pytest.param("exit", "forward", marks=pytest.mark.slow),
         pytest.param("gil-hang", "forward", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind,phase", KINDS)
def test_nanogpt_like_resumes_bitwise_after_rank0_fails(tmp_path, fault_free, kind, phase):
    """Rank 0 fails at step 6; the snapshot comes from rank 1, which never held rank 0's
    best_val_loss, eval history or prefetched batch: all three come back to rank 0."""
    weights, reports = fault_free
    spec = f"{kind}@rank=0,step={FAULT_STEP},phase={phase}"
    run, got = run_nanogpt(tmp_path, kind, inject=[spec])
    assert run.code == 0, run.stderr[-4000:]
    roots = [e for e in run.of("failure_detected") if e.get("root_cause")]
    assert roots and roots[0]["rank"] == 0 and roots[0]["kind"] == KIND_EVENT[kind], roots
    # I1: in the optimizer phase the all-reduce is done: rank 1 completes the step.
    assert_resumed_once(run, FAULT_STEP + 1 if phase == "optimizer" else FAULT_STEP)
    assert_bitwise_equal(run.weights(), weights)
    assert got == reports          # rank 0's best_val_loss and evals, bit for bit


def test_prefetch_without_carry_diverges(tmp_path, fault_free):
    """The same loop without session.carry: the resumed run gets its first batch from a
    fresh process's RNG and rank 0 forgets its evals; nothing fails, the result is wrong."""
    weights, reports = fault_free
    run, got = run_nanogpt(tmp_path, "no-carry", inject=[f"crash@rank=0,step={FAULT_STEP}"],
                           script_args=["--no-carry"])
    assert run.code == 0, run.stderr[-4000:]
    assert_resumed_once(run, FAULT_STEP)
    mine = run.weights()
    assert any(not torch.equal(mine[k], weights[k]) for k in weights)
    assert [e[0] for e in got[0]["evals"]] == [8] != [e[0] for e in reports[0]["evals"]]


def test_shim_only_rank0_values_come_back_and_a_per_rank_extra_state_is_named(tmp_path,
                                                                              fault_free):
    """No supervisor: the healthy rank writes the snapshot, torchrun restarts both, and
    rank 0 still gets its own carried values (its slots in JITC_DIR). The script also hands
    a per-rank value over as extra_state (claimed replicated): the resume names it."""
    weights, reports = fault_free
    snaps, out, report = tmp_path / "snaps", tmp_path / "out.pt", tmp_path / "report"
    lib = subprocess.run([str(BIN / "jitc"), "lib"], capture_output=True, text=True, check=True)
    env = dict(clean_env(), LD_PRELOAD=lib.stdout.strip(), JITC_DIR=str(snaps),
               JITC_INJECT=f"crash@rank=0,step={FAULT_STEP}")
    cmd = [str(BIN / "torchrun"), "--max-restarts=2", "--nproc-per-node", "2",
           "--monitor-interval", "0.1", str(SCRIPT), "--steps", str(STEPS), "--save", str(out),
           "--report", str(report), "--quiet", "--per-rank-extra"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "extra_state['counter'] differed between replicas [0, 1]" in proc.stderr
    # Resumed, not started over (a run from step 0 ends with the same weights and evals).
    assert "jitc: resumed from step " in proc.stderr, proc.stderr[-4000:]
    assert "starting at step 0" not in proc.stderr, proc.stderr[-4000:]
    assert_bitwise_equal(torch.load(out, weights_only=True), weights)
    got = {r: json.loads((report / f"rank-{r}.json").read_text()) for r in (0, 1)}
    assert got == reports
