"""Integration: ``jitc supervise`` over real ranks (real_rank.py on the real libjitc.so,
started by a fake launcher: real processes, real socket)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from jitc.supervisor.state import ExitCode

from .conftest import child_env, fake_job, supervise_argv

SCHEMA_NAMES = {"start", "fault_injected", "failure_detected", "snapshot_requested",
                "snapshot_done", "stage_rebuilt", "job_stopped", "restart", "resumed",
                "finished", "gave_up"}


def _failures(run, attempt=0):
    return [e for e in run.named("failure_detected") if e["attempt"] == attempt]


def test_crash_is_detected_fast_snapshotted_and_resumed(supervise):
    run = supervise("--inject", "crash@rank=1,step=5", job=fake_job(3, "--steps", "10"))
    assert run.rc == ExitCode.SUCCESS, run.stderr
    ev = run.events
    for e in ev:   # schema: ts, event, attempt everywhere
        assert isinstance(e["ts"], float) and e["event"] in SCHEMA_NAMES
        assert isinstance(e["attempt"], int)
    injected = run.named("fault_injected")[0]
    failure = _failures(run)[0]
    assert (failure["rank"], failure["kind"], failure["step"]) == (1, "crash", 5)
    latency = failure["ts"] - injected["ts"]
    print(f"crash detection latency: {latency * 1000:.1f} ms")
    assert 0 <= latency < 1.0
    # Both survivors write one stripe each of the step-5 snapshot.
    req = run.named("snapshot_requested")
    assert sorted((e["rank"], tuple(e["stripes"]), e["nstripes"]) for e in req) == [
        (0, (0,), 2), (2, (1,), 2)]
    done = run.named("snapshot_done")[0]
    assert done["step"] == 5 and done["bytes"] > 0
    manifest = json.loads(open(done["snapshot"]).read())
    assert manifest["step"] == 5
    from jitc.snapshot import load    # the real loader verifies what the shim wrote
    snap = load(done["snapshot"])
    assert snap.step == 5 and snap.state == {"completed": 5}
    assert all((snap.tensors[f"w{i}"] == 5 + i).all() for i in range(4))
    stopped = run.named("job_stopped")[0]
    assert stopped["root_cause"] == [1] and stopped["kind"] == "crash"
    restart = run.named("restart")[0]
    assert restart["attempt"] == 1 and restart["resume"] == done["snapshot"]
    resumed = run.named("resumed")[0]
    assert resumed["step"] == 5 and resumed["replayed"] == 1
    assert ev[-1]["event"] == "finished" and ev[-1]["attempt"] == 1
    assert "rank 1 crash at step 5 (root cause)" in run.stderr


@pytest.mark.parametrize("kind,reported,field", [
    ("exception", "exception", None),
    ("segv", "signal", ("signal", "SIGSEGV")),
    ("cuda-error", "cuda-error", ("error", "cudaErrorIllegalAddress")),
    ("nccl-error", "nccl-error", ("error", "ncclUnhandledCudaError")),   # as the shim's NCCL fails
])
def test_failure_kinds_blame_the_failing_rank(supervise, request, kind, reported, field):
    # The CUDA and NCCL faults fire in the shim's interposers, over stub libraries.
    stubs = (["--stubs", str(request.getfixturevalue("cuda_stubs"))]
             if kind in ("cuda-error", "nccl-error") else [])
    run = supervise("--inject", f"{kind}@rank=2,step=3", "--max-restarts", "0",
                    job=fake_job(3, "--steps", "6", *stubs))
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr
    stopped = run.named("job_stopped")[0]
    assert stopped["root_cause"] == [2] and stopped["kind"] == reported
    primary = [e for e in _failures(run) if e["rank"] == 2][0]
    assert primary["kind"] == reported and primary["step"] == 3
    if field:
        assert primary[field[0]] == field[1]
    if kind == "nccl-error":   # the peers' reports are logged as secondary, never blamed
        peers = [e for e in _failures(run) if e["kind"] == "peer"]
        assert peers and all(e["secondary"] for e in peers)
    assert run.named("gave_up")[0]["reason"].startswith("restarts exhausted")


def test_hang_blames_least_advanced_rank(supervise):
    # Every rank reports a hang; the straggler (rank 1) reports last but is least advanced.
    run = supervise("--inject", "hang@rank=1,step=2", "--hang-timeout", "0.5",
                    "--max-restarts", "0", job=fake_job(3, "--steps", "5"))
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr
    hangs = _failures(run)
    assert {e["rank"] for e in hangs} == {0, 1, 2} and all(e["kind"] == "hang" for e in hangs)
    assert hangs[-1]["rank"] == 1          # reported last ...
    assert run.named("job_stopped")[0]["root_cause"] == [1]   # ... and still blamed
    # The blocked healthy replicas snapshot step 2 (stuck in step 2's all-reduce).
    assert run.named("snapshot_done")[0]["step"] == 2


def test_gil_hang_is_reported_by_the_ranks_own_watchdog(supervise):
    # The GIL held for good: the native watchdog needs no Python, so the rank still reports
    # its own hang, before the supervisor's backstop would.
    run = supervise("--inject", "gil-hang@rank=0,step=2", "--hang-timeout", "0.5",
                    "--max-restarts", "0", job=fake_job(2, "--steps", "5"))
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr
    hangs = _failures(run)
    assert {e["rank"] for e in hangs} == {0, 1} and all(e["kind"] == "hang" for e in hangs)
    assert not any("supervisor backstop" in e["detail"] for e in hangs), hangs
    root, = [e for e in hangs if e.get("root_cause")]
    assert root["rank"] == 0 and root["progress"] == [2, 1, 0]
    assert run.named("job_stopped")[0]["root_cause"] == [0]
    assert run.named("snapshot_done")[0]["step"] == 2      # the waiting replica's


def test_stopped_job_caught_by_supervisor_backstop(supervise):
    # A stopped process (SIGSTOP: its watchdog stops with it) and no peer to report: only
    # the supervisor can see the hang, and nothing is left to answer for the state.
    # Stopped at step 5 of 0.05 s steps: after its first PROGRESS (sent at most every 0.1 s),
    # without which the supervisor knows no position to watch.
    run = supervise("--hang-timeout", "0.5", "--max-restarts", "0", "--grace", "1",
                    job=fake_job(1, "--steps", "10", "--step-time", "0.05", "--sigstop", "0:5"))
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr
    hangs = _failures(run)
    assert hangs and all(e["kind"] == "hang" for e in hangs)
    assert "supervisor backstop" in hangs[0]["detail"]
    assert run.named("job_stopped")[0]["root_cause"] == [0]
    assert "no usable replica" in run.named("gave_up")[0]["reason"]


def test_stopped_rank_is_blamed_not_its_waiting_peer(supervise):
    # Rank 0 stopped in step 5's forward (last heard of at step 4 or 5); rank 1 waits in
    # step 5's all-reduce and its watchdog reports the hang. Rank 0 is the least
    # advanced and the cause; rank 1 holds a good replica.
    run = supervise("--hang-timeout", "0.5", "--max-restarts", "0", "--grace", "1",
                    job=fake_job(2, "--steps", "10", "--step-time", "0.05", "--sigstop", "0:5"))
    assert run.named("job_stopped")[0]["root_cause"] == [0]
    assert all(e["kind"] == "hang" for e in _failures(run))
    assert run.named("snapshot_done")[0]["step"] == 5
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr


def test_restart_limit_exhausted_exit_3(supervise):
    specs = [f"exception@rank=0,step=1,attempt={a}" for a in range(3)]
    run = supervise(*sum((["--inject", s] for s in specs), []), "--max-restarts", "2",
                    job=fake_job(2, "--steps", "4"))
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr
    assert [e["attempt"] for e in run.named("start")] == [0, 1, 2]
    assert len(run.named("restart")) == 2
    assert run.events[-1]["event"] == "gave_up"


def test_writer_dying_mid_snapshot_has_stripe_reassigned(supervise):
    # A launcher slow to stop the survivors: the shim lets a held SIGTERM through once its
    # own stripe is written, so a survivor SIGTERMed at once (torchrun) may be gone before
    # rank 0's stripe can be moved to it.
    run = supervise("--inject", "crash@rank=1,step=3",
                    job=fake_job(3, "--steps", "6", "--die-in-snapshot", "0"),
                    env={"FAKE_LAUNCHER_TERM_DELAY": "30"})
    assert run.rc == ExitCode.SUCCESS, run.stderr
    req = run.named("snapshot_requested")
    moved = [e for e in req if e.get("reassigned_from") == 0]
    assert len(moved) == 1 and moved[0]["rank"] == 2 and moved[0]["stripes"] == [0]
    done = run.named("snapshot_done")[0]
    assert done["stripes"] == 2 and done["step"] == 3
    assert run.named("resumed")[0]["step"] == 3


def test_all_replicas_failing_gives_up_without_resuming(supervise):
    # Rank 1 crashes; rank 0's own code fails in the same step: its state is suspect.
    run = supervise("--inject", "crash@rank=1,step=3", "--inject", "exception@rank=0,step=3",
                    job=fake_job(2, "--steps", "6"))
    assert run.rc == ExitCode.JOB_FAILED, run.stderr
    names = [e["event"] for e in run.events]
    assert "gave_up" in names and "restart" not in names and "snapshot_done" not in names
    assert len(run.named("start")) == 1
    assert "no usable replica" in run.named("gave_up")[0]["reason"]
    assert not list((run.run_dir / "snapshots").glob("*/manifest.json"))


@pytest.mark.parametrize("how", [
    "--no-shim",
    "--no-state",
])
def test_no_registered_state_restarts_from_scratch(supervise, how):
    run = supervise("--inject", "crash@rank=0,step=2", job=fake_job(2, "--steps", "4", how))
    assert run.rc == ExitCode.SUCCESS, run.stderr
    starts = run.named("start")
    assert len(starts) == 2 and "resume" not in starts[1]
    assert not run.named("snapshot_requested")


def test_job_exit_without_reports_is_exit_failure(supervise):
    run = supervise("--max-restarts", "0", job=[sys.executable, "-c", "raise SystemExit(7)"])
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr
    f = _failures(run)[0]
    assert f["kind"] == "exit" and f["rank"] is None and f["exit_code"] == 7


def test_plain_successful_job(supervise):
    run = supervise(job=[sys.executable, "-c", "print('hi')"])
    assert run.rc == ExitCode.SUCCESS, run.stderr
    assert [e["event"] for e in run.events] == ["start", "job_stopped", "finished"]


@pytest.mark.parametrize("args", [
    ["--inject", "crash@rank=x,step=1", "--", "true"],
    ["--inject", "boom@rank=1,step=1", "--", "true"],
    ["--max-restarts", "-1", "--", "true"],
    ["--hang-timeout", "0", "--", "true"],
    ["--no-such-flag", "--", "true"],
    [],
])
def test_usage_errors_exit_2_and_start_nothing(tmp_path, args):
    marker = tmp_path / "started"
    job = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"] if args[-1:] == ["true"] else []
    argv = supervise_argv(tmp_path / "run", *(args[:-2] if job else args), *job)
    proc = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == ExitCode.USAGE
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jitc: error: ")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_stop_after_a_published_snapshot_uses_the_restart_grace(supervise):
    # A launcher that takes 30 s to stop: with the snapshot published nothing of the attempt
    # is needed, so the restart waits --restart-grace, not --grace. The launcher must be
    # slow on its own teardown too (it begins one when it sees rank 1 die): the supervisor
    # releases the ranks before it signals the launcher, and a launcher that exits once
    # they go needs no SIGKILL (job_stopped then has no "killed"), which is what made this
    # test flaky under load.
    slow = {"FAKE_LAUNCHER_TERM_DELAY": "30"}
    run = supervise("--grace", "20", "--restart-grace", "0.2", "--no-standby",
                    "--inject", "crash@rank=1,step=5", job=fake_job(2, "--steps", "10"), env=slow)
    assert run.rc == ExitCode.SUCCESS, run.stderr
    assert run.named("snapshot_done")
    stopped = run.named("job_stopped")[0]
    assert stopped["killed"] and stopped["seconds"] < 5, stopped
    bad = supervise("--restart-grace", "0", job=fake_job(1), env=slow)
    assert bad.rc == ExitCode.USAGE and "restart_grace_s" in bad.stderr


def test_missing_run_dir_parent_is_usage_error(tmp_path):
    argv = supervise_argv(tmp_path / "nope" / "run", "--", "true")
    proc = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == ExitCode.USAGE and "does not exist" in proc.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, ExitCode.TERMINATED),
                                      (signal.SIGINT, ExitCode.INTERRUPTED)])
def test_signal_to_supervisor_stops_everything(tmp_path, sig, code):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(supervise_argv(run_dir, "--grace", "2", "--",
                                           *fake_job(2, "--steps", "100000", "--step-time", "0.01")),
                            env=child_env(), stderr=subprocess.PIPE, text=True)
    sup = psutil.Process(proc.pid)
    deadline = time.monotonic() + 20
    job = []
    while time.monotonic() < deadline and len(job) < 3:   # launcher + 2 ranks
        job = sup.children(recursive=True)
        time.sleep(0.1)
    assert len(job) >= 3
    pids = [p.pid for p in job]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)],
                                    timeout=3)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "gave_up" and events[-1]["kind"] == "interrupted"


def test_ld_preload_prepended_and_env_set(tmp_path, supervise):
    out = tmp_path / "env.json"
    code = ("import json,os;json.dump({k: os.environ.get(k) for k in ('LD_PRELOAD','JITC_SOCKET',"
            "'JITC_DIR','JITC_ATTEMPT','JITC_INJECT','JITC_HANG_TIMEOUT','JITC_RUN_DIR')},"
            f"open({str(out)!r},'w'))")
    run = supervise("--inject", "crash@rank=3,step=9", "--hang-timeout", "7",
                    job=[sys.executable, "-c", code], env={"LD_PRELOAD": "libfoo.so"})
    assert run.rc == ExitCode.SUCCESS, run.stderr
    from jitc._lib import lib_path
    got = json.loads(out.read_text())
    assert got["LD_PRELOAD"] == f"{lib_path()}:libfoo.so"
    assert got["JITC_DIR"] == str((run.run_dir / "snapshots").resolve())
    assert got["JITC_ATTEMPT"] == "0" and got["JITC_HANG_TIMEOUT"] == "7.0"
    assert got["JITC_INJECT"] == "crash@rank=3,step=9,phase=forward,attempt=0"
    assert os.path.exists(os.path.dirname(got["JITC_SOCKET"]))
