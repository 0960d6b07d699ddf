"""Shim-only mode (issue 14, item 1): torchrun SIGTERMs a healthy rank because a peer died,
often before the rank's next collective fails. The rank writes its snapshot of the last
consistent state before it goes — at once outside the optimizer window, after it otherwise —
within the SIGTERM hold (jitc/limits.py), and says so on stderr. A rank that failed itself
(a SUSPECT kind in the failure table), or that has no training under way, dies as before."""
from __future__ import annotations

import inspect
import json
import signal
import time
from pathlib import Path

from jitc import limits
from jitc.snapshot import layout

from .conftest import INIT, register, spawn

REGISTER = register(4096)

READY = "print('ready', flush=True)\n"


def _term(body: str, root: Path, extra_env=None, after: float = 0.0):
    env = {"JITC_DIR": str(root)}
    env.update(extra_env or {})
    child = spawn(INIT + REGISTER + body, env)
    assert child.stdout.readline().strip() == "ready", child.stderr.read()
    time.sleep(after)
    t0 = time.monotonic()
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=30)
    return child.returncode, time.monotonic() - t0, out, err


def _done(root: Path, step: int) -> dict:
    # Rank 0 of attempt 0, by layout's names: the shim's one spelling of its own (write_local,
    # kLocalStem in csrc/agent.cpp) must agree with them.
    d = layout.local_dir(root, 0, step, 0)
    return json.loads((d / layout.done_file(0, 1)).read_text())


def test_torchruns_stop_grace_leaves_room_for_the_hold() -> None:
    # torchrun restarts a worker group with _stop_workers -> _shutdown(): SIGTERM, then
    # SIGKILL after the default `timeout` (30 s in torch 2.13). The rank's hold, derived from
    # JITC_GRACE by the one rule in jitc/limits.py, must end well before that.
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    grace = inspect.signature(LocalElasticAgent._shutdown).parameters["timeout"].default
    assert limits.sigterm_hold_s(limits.GRACE_S) < limits.GRACE_S <= grace


def test_sigterm_outside_the_window_writes_the_snapshot_at_once(tmp_path: Path) -> None:
    root = tmp_path / "snaps"
    rc, took, out, err = _term("lib.jitc_step_begin(3)\n" + READY + "time.sleep(30)\n", root)
    assert rc == limits_exit_code(), err
    assert took < 3.0, took
    assert _done(root, 3)["step"] == 3
    assert "jitc: rank 0 (SIGTERM from the launcher): snapshot of step 3 written to " \
        f"{root}/snap-a0-s3-0 in " in err, err
    assert "jitc:" not in out


def test_sigterm_in_the_window_writes_the_next_step_once_it_closes(tmp_path: Path) -> None:
    # The optimizer step of step 3 ran; the state is step 4's once step_begin(4) closes the
    # window, 1 s later: the snapshot waits for it and is of step 4, never a torn state.
    body = ("lib.jitc_step_begin(3)\nassert lib.jitc_optimizer_begin(5.0) == 0\n"
            "lib.jitc_optimizer_end()\n" + READY + "time.sleep(1.0)\nlib.jitc_step_begin(4)\n"
            "time.sleep(30)\n")
    rc, took, out, err = _term(body, tmp_path / "snaps")
    assert rc == limits_exit_code(), err
    assert 0.5 < took < 4.0, took
    assert _done(tmp_path / "snaps", 4)["step"] == 4
    assert "snapshot of step 4 written" in err, err


def test_a_window_that_never_closes_is_bounded_by_the_hold(tmp_path: Path) -> None:
    # JITC_GRACE=6: hold 5 s; the window wait takes at most half of what is left past the
    # writer's join grace (1.5 s). Nothing torn is written; the rank says why and goes.
    body = ("lib.jitc_step_begin(3)\nassert lib.jitc_optimizer_begin(5.0) == 0\n" + READY +
            "time.sleep(60)\n")
    rc, took, out, err = _term(body, tmp_path / "snaps", {"JITC_GRACE": "6"})
    assert took < limits.sigterm_hold_s(6.0), took
    assert not list((tmp_path / "snaps").glob("snap-*/*.done"))
    assert "jitc: rank 0 (SIGTERM from the launcher): snapshot of step 3 not written: " \
        "optimizer window open" in err, err


def test_a_write_that_fails_says_the_errno_and_the_path(tmp_path: Path) -> None:
    # A file where the snapshot directory goes (the same for a full disk: ENOSPC): said on
    # stderr without JITC_DEBUG, with the errno's name and the path.
    root = tmp_path / "snaps"
    root.mkdir(mode=0o700)
    (root / "snap-a0-s3-0").write_text("in the way")
    rc, _, _, err = _term("lib.jitc_step_begin(3)\n" + READY + "time.sleep(30)\n", root)
    line = [x for x in err.splitlines() if x.startswith("jitc: ")]
    assert len(line) == 1 and "snapshot of step 3 not written" in line[0], err
    assert "ENOTDIR" in line[0] or "EEXIST" in line[0], line
    assert str(root / "snap-a0-s3-0") in line[0], line


def test_a_rank_that_failed_itself_is_not_held(tmp_path: Path) -> None:
    # exception is SUSPECT in the failure table: its state is never written.
    body = ("lib.jitc_step_begin(3)\nlib.jitc_report_failure(b'exception', b'user bug')\n" +
            READY + "time.sleep(30)\n")
    rc, took, _, err = _term(body, tmp_path / "snaps")
    assert rc == -signal.SIGTERM and took < 1.0, err
    assert not (tmp_path / "snaps").exists() or not list((tmp_path / "snaps").iterdir())


def test_before_the_first_step_sigterm_is_not_held(tmp_path: Path) -> None:
    rc, took, _, err = _term(READY + "time.sleep(30)\n", tmp_path / "snaps")
    assert rc == -signal.SIGTERM and took < 1.0, err


def limits_exit_code() -> int:
    return 75   # csrc/config.h limits::kLocalRecoveryExitCode (EX_TEMPFAIL)
