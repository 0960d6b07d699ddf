"""Issue 14, item 3: the launcher's death under ``jitc supervise``.

torchrun SIGKILLed mid-run: the ranks it leaves alive (re-parented to the supervisor, a
child subreaper, and still connected to its socket) are healthy replicas, snapshotted by the
normal JIT path, and the job restarts from that snapshot (bitwise equal to the fault-free
run, at most one step replayed). If the ranks went with it, the periodic snapshot is the
fallback, and without one the supervisor says exactly why nothing could be saved."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from .conftest import BIN, ROOT, assert_bitwise_equal, clean_env

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "tests" / "e2e" / "busy_rank_train.py"
STEPS = 16


def _events(run_dir: Path) -> list[dict]:
    f = run_dir / "events.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def supervised(tmp: Path, name: str, *, kill_at: int | None = None, with_ranks: bool = False,
               periodic_every: int | None = None):
    """Run the busy script under ``jitc supervise -- torchrun``; once rank 0 runs step
    ``kill_at``, SIGKILL torchrun (and with ``with_ranks`` its ranks at the same moment)."""
    run_dir, out, progress = tmp / name, tmp / f"{name}.pt", tmp / f"{name}.progress"
    cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir), "--max-restarts", "2",
           "--", str(BIN / "torchrun"), "--nproc-per-node", "2", "--monitor-interval", "0.1",
           str(SCRIPT), "--steps", str(STEPS), "--busy", "0.2", "--save", str(out),
           "--progress", str(progress)]
    if periodic_every:
        cmd += ["--periodic-every", str(periodic_every)]
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if kill_at is not None:
        deadline = time.monotonic() + 180
        while _progress(progress) < kill_at and proc.poll() is None:
            assert time.monotonic() < deadline, "the job never reached the step"
            time.sleep(0.02)
        launcher = [e for e in _events(run_dir) if e["event"] == "start"][-1]["pid"]
        victims = [p.pid for p in psutil.Process(launcher).children()] if with_ranks else []
        for pid in [launcher, *victims]:
            os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, _events(run_dir), out, err


def _progress(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return -1


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory):
    code, events, out, err = supervised(tmp_path_factory.mktemp("ref"), "ref")
    assert code == 0, err[-3000:]
    return torch_load(out)


def test_launcher_sigkilled_its_live_ranks_are_snapshotted_and_resumed(tmp_path, fault_free):
    code, events, out, err = supervised(tmp_path, "run", kill_at=5)
    assert code == 0, err[-4000:]
    of = lambda name: [e for e in events if e["event"] == name]   # noqa: E731
    job = [e for e in of("failure_detected") if e.get("root_cause")]
    assert [(e["rank"], e["kind"], e.get("signal")) for e in job] == [(None, "exit", "SIGKILL")]
    done = [e for e in of("snapshot_done") if e["attempt"] == 0]
    assert len(done) == 1 and done[0]["step"] >= 5, events
    restart = of("restart")[0]
    assert restart["resume"] == done[0]["snapshot"] and not restart.get("fallback"), restart
    resumed = of("resumed")
    assert {e["rank"] for e in resumed} == {0, 1}
    assert all(e["step"] == done[0]["step"] and e["replayed"] <= 1 for e in resumed), resumed
    assert not of("gave_up")
    assert_bitwise_equal(torch_load(out), fault_free)


def test_launcher_and_ranks_sigkilled_falls_back_to_the_periodic_snapshot(tmp_path, fault_free):
    code, events, out, err = supervised(tmp_path, "run", kill_at=7, with_ranks=True,
                                        periodic_every=2)
    assert code == 0, err[-4000:]
    restart = [e for e in events if e["event"] == "restart"][0]
    assert restart.get("fallback") and "snap-p0-s" in restart["resume"], restart
    assert "the launcher (pid " in restart["reason"] and "exited by SIGKILL" in restart["reason"]
    # Resumed from the periodic snapshot's step, not started over.
    step = int(restart["resume"].split("snap-p0-s")[1].split("-")[0].split("/")[0])
    resumed = [e for e in events if e["event"] == "resumed"]
    assert step > 0 and {e["rank"] for e in resumed} == {0, 1}, resumed
    assert all(e["step"] == step for e in resumed), (step, resumed)
    assert_bitwise_equal(torch_load(out), fault_free)


def test_launcher_and_ranks_sigkilled_without_a_snapshot_says_why(tmp_path):
    code, events, out, err = supervised(tmp_path, "run", kill_at=5, with_ranks=True)
    assert code != 0
    gave_up = [e for e in events if e["event"] == "gave_up"]
    assert len(gave_up) == 1, events
    reason = gave_up[0]["reason"]
    # Exactly why: each rank's fate, and the launcher's.
    assert "rank 0: crash" in reason and "rank 1: crash" in reason, reason
    assert "exited by SIGKILL and ranks [0, 1] went with it" in reason, reason
    assert "no complete snapshot to fall back to" in reason, reason
    assert reason in err, err[-3000:]


def torch_load(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)
