"""Fatal signals, _exit attribution and SIGTERM deferral in a real child rank.

The rank must tell the supervisor why it is dying and then die exactly as it would have:
the exit status still shows the signal."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from jitc.limits import sigterm_hold_s
from jitc.protocol import Msg

from .conftest import INIT, register, spawn

REGISTER = register(4096)


def _failure(supervisor, child_body: str, extra_env=None):
    env = {"JITC_SOCKET": supervisor.path}
    env.update(extra_env or {})
    child = spawn(INIT + child_body, env)
    supervisor.accept()
    supervisor.expect(Msg.HELLO)
    fail = supervisor.expect(Msg.FAILURE, timeout=10).body
    out, err = child.communicate(timeout=10)
    return fail, child.returncode, err


def test_segv_reported_and_process_dies_by_it(supervisor) -> None:
    fail, rc, err = _failure(supervisor, "lib.jitc_step_begin(5)\nlib.jitc_set_phase(2)\nlib.jitc_fault_segv()\n")
    assert fail["kind"] == "signal"
    assert fail["signal"] == "SIGSEGV"
    assert fail["step"] == 5
    assert fail["phase"] == "backward"
    assert fail["rank"] == 0
    assert rc == -signal.SIGSEGV, err


def test_abort_reported_and_process_dies_by_it(supervisor) -> None:
    fail, rc, err = _failure(supervisor, "lib.jitc_step_begin(1)\nos.abort()\n")
    assert fail["kind"] == "signal"
    assert fail["signal"] == "SIGABRT"
    assert rc == -signal.SIGABRT, err


def test_previous_handler_still_runs(supervisor) -> None:
    # Python's faulthandler was there first: it must still dump the traceback.
    body = "lib.jitc_fault_segv()\n"
    child = spawn("import faulthandler\nfaulthandler.enable()\n" + INIT + body,
                  {"JITC_SOCKET": supervisor.path})
    supervisor.accept()
    fail = supervisor.expect(Msg.FAILURE, timeout=10).body
    out, err = child.communicate(timeout=10)
    assert fail["signal"] == "SIGSEGV"
    assert "Segmentation fault" in err, err
    assert child.returncode == -signal.SIGSEGV


def test_os_exit_nonzero_is_attributed(supervisor) -> None:
    fail, rc, err = _failure(supervisor, "lib.jitc_step_begin(4)\nos._exit(13)\n")
    assert fail["kind"] == "exit"
    assert fail["code"] == 13
    assert fail["step"] == 4
    assert rc == 13, err


def test_os_exit_after_goodbye_is_not_a_failure(supervisor) -> None:
    child = spawn(INIT + "lib.jitc_shutdown(1)\nos._exit(3)\n", {"JITC_SOCKET": supervisor.path})
    supervisor.accept()
    supervisor.expect(Msg.GOODBYE)
    assert supervisor.recv(timeout=5) is None  # EOF, no FAILURE
    child.wait(timeout=10)
    assert child.returncode == 3


def test_sigterm_held_until_snapshot_written(supervisor, tmp_path: Path) -> None:
    # torchrun SIGTERMs survivors before the supervisor's SNAPSHOT arrives: the rank must
    # hold the signal, write its stripe, and only then die by SIGTERM.
    child = spawn(INIT + REGISTER + "lib.jitc_step_begin(5)\nprint('ready', flush=True)\ntime.sleep(30)\n",
                  {"JITC_SOCKET": supervisor.path, "JITC_DIR": str(tmp_path)})
    supervisor.accept()
    supervisor.expect(Msg.HELLO)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert child.poll() is None, "SIGTERM was not held"
    snap = tmp_path / "snap-x"
    supervisor.send(Msg.SNAPSHOT, {"id": "x", "dir": str(snap), "stripes": [0],
                                   "files": ["stripe-0-of-1"], "nstripes": 1, "step": 5})
    done = supervisor.expect(Msg.SNAPSHOT_DONE, timeout=10).body
    assert done["ok"] is True, done
    assert done["stripe"] == 0 and done["step"] == 5 and done["id"] == "x"
    assert (snap / "stripe-0-of-1.safetensors").is_file()
    child.wait(timeout=5)
    assert child.returncode == -signal.SIGTERM


def test_sigterm_after_release_is_not_held(supervisor) -> None:
    child = spawn(INIT + "lib.jitc_step_begin(1)\nassert lib.jitc_wait_command(10.0) == 1\n"
                  "print('released', flush=True)\ntime.sleep(30)\n", {"JITC_SOCKET": supervisor.path})
    supervisor.accept()
    supervisor.expect(Msg.HELLO)
    supervisor.send(Msg.RELEASE, {})
    assert child.stdout.readline().strip() == "released"
    t0 = time.monotonic()
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert child.returncode == -signal.SIGTERM


def test_sigterm_held_at_most_the_bound_without_command(supervisor) -> None:
    # No SNAPSHOT and no RELEASE ever come: the rank still dies by SIGTERM, after the hold
    # derived from the grace it was told (jitc/limits.py sigterm_hold_s: 2 s -> 1 s), not
    # before, not never, and before the SIGKILL the grace would bring.
    grace = 2.0
    child = spawn(INIT + "print('ready', flush=True)\ntime.sleep(60)\n",
                  {"JITC_SOCKET": supervisor.path, "JITC_GRACE": str(grace)})
    supervisor.accept()
    assert child.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=20)
    held = time.monotonic() - t0
    assert sigterm_hold_s(grace) <= held < grace, held
    assert child.returncode == -signal.SIGTERM


def test_unsupervised_sigterm_not_held() -> None:
    child = spawn(INIT + "print('ready', flush=True)\ntime.sleep(30)\n")
    assert child.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert child.returncode == -signal.SIGTERM


def test_uncaught_exception_keeps_its_exit_status(supervisor) -> None:
    # The script dies of a Python exception without jitc_shutdown: the interpreter exits
    # with status 1 while the agent thread still runs. That must stay status 1, not
    # std::terminate's SIGABRT from destroying a joinable thread at exit.
    for env in ({}, {"JITC_SOCKET": supervisor.path}):
        child = spawn(INIT + "lib.jitc_step_begin(3)\nraise ValueError('user bug')\n", env)
        if env:
            supervisor.accept()
            supervisor.expect(Msg.HELLO)
        out, err = child.communicate(timeout=15)
        assert child.returncode == 1, err
        assert "ValueError: user bug" in err and "terminate called" not in err, err
