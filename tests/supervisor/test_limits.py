"""One source of limits (jitc/limits.py): the supervisor resolves them (flag > environment >
default), tells the job, and the shim obeys exactly what it was told; a shim-only rank reads
the same variables with the same rules. The library's own account (jitc_limits()) is held
against the Python side, and the relations are asserted: supervisor backstop > rank
watchdog, grace > SIGTERM hold, the snapshot timeout the writer obeys = the one the user
gave (and the supervisor waits longer than the writer may take)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jitc import env, limits
from jitc.errors import UsageError
from jitc.limits import Limits
from jitc.supervisor.options import Options
from jitc.supervisor.state import ExitCode

from .conftest import HERE, child_env, supervise_argv

REAL_RANK = HERE / "real_rank.py"
FAKE_LAUNCHER = HERE / "fake_launcher.py"
LIMIT_VARS = (env.HANG_TIMEOUT, env.HANG_FLOOR, env.HANG_MULTIPLE, env.GRACE,
              env.SNAPSHOT_TIMEOUT, env.ATTEMPT)


@pytest.fixture
def clean_env(monkeypatch):
    for name in LIMIT_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def shim_limits(environ: dict[str, str]) -> dict:
    """What the real library, in a fresh process, says it obeys under ``environ``."""
    code = ("from jitc._shim import ffi_lib; ffi, lib = ffi_lib(); "
            "buf = ffi.new('char[]', 1024); assert lib.jitc_limits(buf, 1024) == 0; "
            "print(ffi.string(buf).decode())")
    base = {k: v for k, v in os.environ.items() if k not in LIMIT_VARS}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **environ},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)


def opts(tmp_path: Path, **kw) -> Options:
    return Options(command=("true",), run_dir=tmp_path / "r", lib=Path("/x"), **kw)


# -- the rules -------------------------------------------------------------------------------
def test_hang_rule_is_the_shims(clean_env):
    steps = [1.0] * 10 + [8.0]          # p95 of 11 samples is the 11th: the slow one
    assert limits.hang_timeout(steps[:2]) == limits.HANG_INITIAL_S
    assert limits.hang_timeout(steps) == 5 * 8.0
    assert limits.hang_timeout(steps, floor_s=70) == 70 and limits.hang_timeout(steps[:10]) == 30
    assert limits.hang_timeout([0.1] * 200, multiple=2) == limits.HANG_FLOOR_S
    # The constants of the rule are the ones compiled into the shim.
    lib = shim_limits({})
    assert (lib["hang_initial"], lib["hang_percentile"], lib["hang_window"],
            lib["hang_min_samples"], lib["heartbeat"]) == (
        limits.HANG_INITIAL_S, limits.HANG_PERCENTILE, limits.HANG_WINDOW,
        limits.HANG_MIN_SAMPLES, limits.HEARTBEAT_S)


def test_sigterm_hold_is_strictly_less_than_grace():
    for grace in (0.05, 0.5, 1.0, 2.0, 10.0, 600.0):
        assert 0 < limits.sigterm_hold_s(grace) < grace


def test_floor_70_backstop_fires_after_the_rank(clean_env, tmp_path):
    # The defect: the supervisor derived its own timeout (p99, floor 60, JITC_HANG_FLOOR
    # ignored), so its backstop fired at 62 s, before the rank's 70 s, and blamed everyone.
    clean_env.setenv(env.HANG_FLOOR, "70")
    o = opts(tmp_path)
    fast = [0.05] * 20
    rank = o.limits.hang_timeout(fast)
    assert rank == 70
    assert o.limits.backstop_s(rank) > rank
    assert shim_limits(o.limits.to_env())["hang_floor"] == 70


def test_supervisor_backstop_waits_for_the_rank_watchdog(clean_env, tmp_path):
    """The planner's own check, driven with a clock: silent for 65 s with JITC_HANG_FLOOR=70
    is not yet a hang (the rank's watchdog has 70 s); past the backstop it is."""
    from jitc.supervisor.planner import Planner
    from jitc.supervisor.planner import reports as R
    from jitc.supervisor.state import State

    clean_env.setenv(env.HANG_FLOOR, "70")
    p = Planner(opts(tmp_path))
    p.begin()
    p.feed(R.JobStarted(1), 0.0)
    p.feed(R.Hello(0, pid=1, world_size=1), 0.0)
    for _ in range(20):    # step times only: the rank never said its own deadline
        p.feed(R.Progress(0, step=5, completed=5, phase=1, step_time=0.05), 0.0)
    p.tick(65.0)
    assert p.failures == [] and p.state is State.RUNNING
    p.tick(70.0 + limits.HANG_BACKSTOP_MARGIN_S + 0.1)
    assert [f.rank for f in p.failures] == [0] and p.failures[0].kind == "hang"


# -- what the supervisor tells the shim, and what the shim obeys --------------------------------
@pytest.mark.parametrize("given", [
    {},
    {"grace_s": 4.0, "snapshot_timeout_s": 7.5},
    {"hang_timeout_s": 12.0, "grace_s": 0.5},
])
def test_relations_hold_in_what_the_shim_obeys(clean_env, tmp_path, given):
    o = opts(tmp_path, **given)
    told = o.limits.to_env()
    lib = shim_limits(told)
    assert lib["error"] == ""
    # The snapshot timeout the writer obeys = the one the user gave (or the default).
    assert lib["snapshot_timeout"] == pytest.approx(given.get("snapshot_timeout_s",
                                                              limits.SNAPSHOT_TIMEOUT_S))
    # ... and the supervisor waits for it longer than the writer may take.
    assert o.snapshot_wait_s > lib["snapshot_timeout"] + lib["snapshot_join_grace"]
    # grace > SIGTERM hold, the same hold on both sides.
    assert lib["grace"] == pytest.approx(o.grace_s)
    assert lib["sigterm_hold"] == pytest.approx(o.limits.sigterm_hold_s) and \
        lib["sigterm_hold"] < o.grace_s
    # supervisor backstop > rank watchdog, for the rule the rank was told.
    assert lib["hang_floor"] == pytest.approx(o.hang_floor_s)
    assert lib["hang_multiple"] == pytest.approx(o.hang_multiple)
    assert lib["hang_timeout"] == pytest.approx(o.hang_timeout_s or 0)
    rank = o.limits.hang_timeout([0.2] * 30)
    assert o.limits.backstop_s(rank) > rank


def test_precedence_flag_over_environment_over_default(clean_env, tmp_path):
    assert opts(tmp_path).grace_s == limits.GRACE_S
    clean_env.setenv(env.GRACE, "20")
    clean_env.setenv(env.SNAPSHOT_TIMEOUT, "30")
    assert (opts(tmp_path).grace_s, opts(tmp_path).snapshot_timeout_s) == (20.0, 30.0)
    assert opts(tmp_path, grace_s=3.0).grace_s == 3.0
    assert opts(tmp_path, grace_s=3.0).limits.to_env()[env.GRACE] == "3.0"


def test_supervised_rank_is_told_the_users_limits(supervise):
    run = supervise("--snapshot-timeout", "7.5", "--grace", "4",
                    job=[sys.executable, str(FAKE_LAUNCHER), "--nproc", "1", str(REAL_RANK),
                         "--steps", "3", "--save-limits"],
                    env={env.HANG_FLOOR: "45", env.HANG_MULTIPLE: "3"})
    assert run.rc == ExitCode.SUCCESS, run.stderr
    lib = json.loads((run.run_dir / "limits-r0.json").read_text())
    assert lib["error"] == ""
    assert lib["snapshot_timeout"] == 7.5
    assert lib["grace"] == 4.0 and lib["sigterm_hold"] == limits.sigterm_hold_s(4.0)
    assert (lib["hang_floor"], lib["hang_multiple"]) == (45.0, 3.0)


# -- one validation rule, one message, both sides -------------------------------------------
CASES = [
    (env.HANG_TIMEOUT, "-5"), (env.HANG_TIMEOUT, "abc"), (env.HANG_TIMEOUT, "0.1"),
    (env.HANG_TIMEOUT, "inf"), (env.HANG_TIMEOUT, "nan"), (env.HANG_TIMEOUT, "1_0"),
    (env.HANG_TIMEOUT, " 5"), (env.HANG_TIMEOUT, "0x10"), (env.HANG_TIMEOUT, "1e999"),
    (env.HANG_TIMEOUT, "3."), (env.HANG_TIMEOUT, ".5"), (env.HANG_TIMEOUT, "1e1"),
    (env.HANG_FLOOR, "3"), (env.HANG_FLOOR, "0"), (env.HANG_MULTIPLE, "0.5"),
    (env.HANG_MULTIPLE, "1"), (env.GRACE, "0"), (env.GRACE, "-1"), (env.GRACE, "2.5"),
    (env.SNAPSHOT_TIMEOUT, "x"), (env.SNAPSHOT_TIMEOUT, "60"), (env.ATTEMPT, "zz"),
    (env.ATTEMPT, "-1"), (env.ATTEMPT, "2"), (env.ATTEMPT, "1.5"), (env.ATTEMPT, "+3"),
]


@pytest.mark.parametrize("name, text", CASES)
def test_shim_and_python_accept_and_word_the_same(name, text):
    try:
        env.parse(name, text)
        expected = ""
    except UsageError as e:
        expected = str(e)
    assert shim_limits({name: text})["error"] == expected


def test_supervisor_refuses_a_malformed_environment_before_starting(supervise):
    run = supervise(job=["true"], env={env.HANG_TIMEOUT: "-5"})
    assert run.rc == ExitCode.USAGE
    assert run.stderr.strip() == ("jitc: error: JITC_HANG_TIMEOUT='-5': must be a number of "
                                  "seconds > 0.2")
    assert not run.events


def test_protect_refuses_a_malformed_environment_in_one_line(tmp_path):
    script = ("import torch, jitc\nm = torch.nn.Linear(2, 2)\n"
              "jitc.protect(m, torch.optim.SGD(m.parameters(), lr=0.1))\n")
    for name, text in ((env.ATTEMPT, "zz"), (env.HANG_TIMEOUT, "abc")):
        proc = subprocess.run([sys.executable, "-c", script],
                              env=child_env(**{name: text, env.DIR: str(tmp_path)}),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"jitc: error: {name}='{text}': "
                                       f"must be {env.RULES[name].text}"), proc.stderr


# -- the hang rule end to end: real shim, real supervisor ------------------------------------
def _straggler_run(supervise, floor: float, timeout: float):
    return supervise("--max-restarts", "0", "--inject", "hang@rank=1,step=5",
                     job=[sys.executable, str(FAKE_LAUNCHER), "--nproc", "2", str(REAL_RANK),
                          "--steps", "40"],
                     env={env.HANG_FLOOR: repr(floor)}, timeout=timeout)


def _assert_straggler_blamed_by_its_watchdog(run, floor: float):
    assert run.rc == ExitCode.RESTARTS_EXHAUSTED, run.stderr
    hangs = run.named("failure_detected")
    assert hangs and all(e["kind"] == "hang" for e in hangs), hangs
    # Both ranks' own watchdogs fired (the supervisor's backstop did not), after the floor.
    assert not any("supervisor backstop" in (e.get("detail") or "") for e in hangs), hangs
    assert {e["rank"] for e in hangs} == {0, 1}
    for e in hangs:
        assert e["timeout"] == pytest.approx(floor) and e["elapsed"] >= floor
        assert e["elapsed"] < limits.Limits.backstop_s(floor)
    root, = [e for e in hangs if e.get("root_cause")]
    assert root["rank"] == 1 and root["progress"] == [5, 1, 0]
    assert run.named("job_stopped")[0]["root_cause"] == [1]


def test_hang_floor_obeyed_by_both_sides_fast(supervise):
    """JITC_HANG_FLOOR=3: the straggler is the root cause, found by its own watchdog after
    3 s and before the supervisor's backstop would fire."""
    _assert_straggler_blamed_by_its_watchdog(_straggler_run(supervise, 3.0, timeout=60), 3.0)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hang_floor_70_blames_the_straggler_not_everyone(supervise):
    """The defect as reported: with JITC_HANG_FLOOR=70 the supervisor's own derived timeout
    (floor 60) fired first and blamed every rank."""
    _assert_straggler_blamed_by_its_watchdog(_straggler_run(supervise, 70.0, timeout=200), 70.0)
