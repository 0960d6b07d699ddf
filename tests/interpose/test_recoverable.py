"""A recoverable CUDA or NCCL error (the context is intact: out of memory, a bad argument)
is reported with its severity and stops nothing: under ``jitc supervise`` the job is neither
stopped nor restarted, and in shim-only mode the rank is not taken down by the local
recovery. A fatal one still starts recovery (the contrast that keeps the first honest).
The severity comes from interpose/classify.cpp; what it means, from jitc/failure_kinds.def."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jitc.supervisor.state import ExitCode

from .conftest import run_scenario, scenario_env

REPO = Path(__file__).resolve().parents[2]
LOCAL_RECOVERY_EXIT = 75   # csrc/config.h limits::kLocalRecoveryExitCode


def _supervise(build, run_dir: Path, *args: str, env: dict[str, str]):
    argv = [sys.executable, "-c", "from jitc.cli import main; main()", "supervise",
            "--run-dir", str(run_dir), "--no-standby", *args, "--",
            str(build.programs["recoverable"]), "sync", "8"]
    extra = dict(env, PYTHONPATH=str(REPO))
    proc = subprocess.run(argv, env=scenario_env(extra, preload=False), capture_output=True,
                          text=True, timeout=60)
    path = run_dir / "events.jsonl"
    events = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return proc, events


def _named(events, name):
    return [e for e in events if e["event"] == name]


@pytest.mark.parametrize("code, severity", [(2, "recoverable"), (700, "fatal")])
def test_failure_message_carries_the_severity(build, supervisor, code, severity):
    r = run_scenario(build, "recoverable", "sync", "4", supervisor=supervisor,
                     env={"STUB_CUDA_SYNC_ERROR": str(code)})
    assert r.returncode == 0, r.stderr
    failure = supervisor.wait_failure(5, kind="cuda-error")
    assert failure is not None, supervisor.failures()
    assert failure["severity"] == severity and failure["code"] == code


def test_recoverable_cuda_error_does_not_restart_the_job(build, tmp_path):
    proc, events = _supervise(build, tmp_path / "run", env={"STUB_CUDA_SYNC_ERROR": "2"})
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr
    assert "rc=2" in proc.stdout and "done=8" in proc.stdout     # the job went on to its end
    assert len(_named(events, "start")) == 1 and not _named(events, "restart")
    assert not _named(events, "snapshot_requested")
    failure, = _named(events, "failure_detected")
    assert (failure["kind"], failure["severity"], failure["error"]) == (
        "cuda-error", "recoverable", "cudaErrorMemoryAllocation")
    assert not failure.get("root_cause")
    assert events[-1]["event"] == "finished"
    assert "recoverable" in proc.stderr                           # the timeline says so


def test_fatal_cuda_error_still_stops_the_job(build, tmp_path):
    # The loop reported progress (state it could have registered) and its only rank is the
    # root cause: recovery starts, finds no healthy replica, and gives up.
    proc, events = _supervise(build, tmp_path / "run", env={"STUB_CUDA_SYNC_ERROR": "700"})
    assert proc.returncode == ExitCode.JOB_FAILED, proc.stderr
    stopped, = _named(events, "job_stopped")
    assert stopped["root_cause"] == [0] and stopped["kind"] == "cuda-error"
    root, = [e for e in _named(events, "failure_detected") if e.get("root_cause")]
    assert root["severity"] == "fatal" and root["error"] == "cudaErrorIllegalAddress"
    assert not _named(events, "finished")


@pytest.mark.parametrize("result, returncode", [
    (4, 0),                        # ncclInvalidArgument: recoverable, the rank goes on
    (2, LOCAL_RECOVERY_EXIT),      # ncclSystemError: fatal, the healthy rank leaves (75)
])
def test_shim_only_local_recovery_only_for_fatal(build, tmp_path, result, returncode):
    r = run_scenario(build, "recoverable", "nccl", "4",
                     env={"STUB_NCCL_RESULT": str(result), "JITC_DIR": str(tmp_path)})
    assert r.returncode == returncode, r.stdout + r.stderr
    assert ("done=4" in r.stdout) == (returncode == 0)
