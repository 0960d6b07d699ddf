"""Issue 13, "Run dir takeover" and "World-readable state": jitc refuses a directory that
another user owns, can write, or has put in the way through a symlink, and everything it
creates is 0700/0600 whatever the umask.

Run as root (the audit's case: a root job, a directory prepared by another user); the other
user is ``nobody``.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jitc.errors import UsageError
from tests.supervisor.conftest import REPO, child_env, fake_job, supervise_argv

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")


def _supervise(run_dir: Path, tmp: Path, *, umask: int | None = None) -> subprocess.CompletedProcess:
    marker = tmp / "job-started"
    job = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(supervise_argv(run_dir, "--no-standby", "--", *job), env=child_env(),
                          capture_output=True, text=True, timeout=60, cwd=tmp, preexec_fn=pre)


def _refused(proc: subprocess.CompletedProcess, run_dir: Path, tmp: Path, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jitc: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not (tmp / "job-started").exists(), "the job was started"
    assert not (run_dir / "events.jsonl").exists() and not (run_dir / "jitc.sock").exists()
    assert not (run_dir / "snapshots").exists()


def test_run_dir_created_by_another_user_0777_is_refused(tmp_path: Path) -> None:
    # The audit's setup: another user pre-creates the run dir, world-writable.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chmod(run_dir, 0o777)
    os.chown(run_dir, NOBODY, NOBODY)
    proc = _supervise(run_dir, tmp_path)
    _refused(proc, run_dir, tmp_path, str(run_dir), "owned by uid 65534")


def test_own_run_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    for mode, who in ((0o777, "group and others"), (0o770, "group"), (0o703, "others")):
        run_dir = tmp_path / f"run-{mode:o}"
        run_dir.mkdir()
        os.chmod(run_dir, mode)
        proc = _supervise(run_dir, tmp_path)
        _refused(proc, run_dir, tmp_path, "writable by " + who, f"{mode:04o}")


def test_run_dir_through_another_users_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    proc = _supervise(link, tmp_path)
    _refused(proc, target, tmp_path, "symlink", "uid 65534")
    # The same link made by this user is fine: the directory it leads to is private.
    link.unlink()
    link.symlink_to(target)
    proc = _supervise(link, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (target / "events.jsonl").is_file()


def test_snapshot_root_of_another_user_inside_own_run_dir_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "snapshots").mkdir()
    os.chown(run_dir / "snapshots", NOBODY, NOBODY)
    proc = subprocess.run(supervise_argv(run_dir, "--no-standby", "--", "true"), env=child_env(),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "snapshot root" in proc.stderr, proc.stderr


@pytest.mark.parametrize("umask", [0, 0o022])
def test_supervisor_creates_a_private_run_dir_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    run_dir = tmp_path / "run"
    proc = _supervise(run_dir, tmp_path, umask=umask)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "snapshots").stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "events.jsonl").stat().st_mode) == 0o600


def test_default_run_dir_parent_is_private(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "from jitc.cli import main; main()", "supervise",
            "--no-standby", "--", "true"]
    proc = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr
    runs = tmp_path / "jitc-runs"
    assert stat.S_IMODE(runs.stat().st_mode) == 0o700
    (run,) = runs.iterdir()
    assert stat.S_IMODE(run.stat().st_mode) == 0o700


@pytest.mark.parametrize("owner,why", [(NOBODY, "uid 65534"), (0, "writable by group and others")])
def test_shim_only_jitc_dir_not_private_is_refused_by_protect(tmp_path: Path, owner: int,
                                                              why: str) -> None:
    # The audit's shim-only case: a world-writable JITC_DIR where another user can place a
    # forged snapshot for the root job to resume from.
    root = tmp_path / "snaps"
    root.mkdir()
    os.chmod(root, 0o777)
    os.chown(root, owner, owner)
    script = ("import torch, jitc\n"
              "m = torch.nn.Linear(2, 2)\n"
              "jitc.protect(m, torch.optim.SGD(m.parameters(), lr=0.1))\n"
              "print('protected')\n")
    env = child_env(JITC_DIR=str(root))
    env.pop("JITC_SOCKET", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "protected" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "JITC_DIR" in lines[0] and why in lines[0], proc.stderr
    assert list(root.iterdir()) == []


# -- the rule itself (jitc/private.py) ---------------------------------------------------

def test_check_dir_rule(tmp_path: Path) -> None:
    from jitc import private
    ok = tmp_path / "ok"
    ok.mkdir(mode=0o755)              # readable by others is the user's choice; writable is not
    assert private.check_dir(ok, "d") == ok.resolve()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)          # like /tmp: still writable by others
    with pytest.raises(private.UntrustedPathError, match="writable by group and others"):
        private.check_dir(sticky, "d")
    with pytest.raises(private.UntrustedPathError, match="does not exist"):
        private.check_dir(tmp_path / "missing", "d")
    (tmp_path / "file").write_text("")
    with pytest.raises(private.UntrustedPathError, match="not a directory"):
        private.check_dir(tmp_path / "file", "d")
    # A symlink deeper in the path, owned by someone else, pointing at a private dir.
    (tmp_path / "hop").symlink_to(ok)
    os.lchown(tmp_path / "hop", NOBODY, NOBODY)
    with pytest.raises(private.UntrustedPathError, match="symlink"):
        private.check_dir(tmp_path / "hop" / ".", "d")
    # A root-owned (system) symlink is trusted; a loop is an error, not a hang.
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(private.UntrustedPathError, match="symlinks"):
        private.check_dir(tmp_path / "a", "d")
    assert issubclass(private.UntrustedPathError, UsageError)   # exit 2


@pytest.mark.parametrize("umask", [0, 0o022])
def test_helpers_create_private_files_and_dirs(tmp_path: Path, umask: int) -> None:
    from jitc import private
    old = os.umask(umask)
    try:
        made = private.make_dir(tmp_path / "a" / "b", "d")
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
        assert stat.S_IMODE(made.stat().st_mode) == 0o700
        private.make_dirs(made / "c" / "d")
        assert stat.S_IMODE((made / "c").stat().st_mode) == 0o700
        with private.open_private(made / "f") as f:
            f.write("x")
        assert stat.S_IMODE((made / "f").stat().st_mode) == 0o600
        os.chmod(made / "f", 0o644)
        with private.open_private(made / "f", "a") as f:   # an existing file is made private
            f.write("y")
        assert stat.S_IMODE((made / "f").stat().st_mode) == 0o600
        assert (made / "f").read_text() == "xy"
        (made / "link").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(OSError):                      # never written through a symlink
            private.open_private(made / "link")
        assert not (tmp_path / "elsewhere").exists()
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0, 0o022])
def test_python_writers_are_private(tmp_path: Path, umask: int) -> None:
    """The writers of snapshot and run-dir files on the Python side: event log, stage
    layout, warm-module list (the manifest is covered by the supervised run below)."""
    from jitc.checkfree.layout import StageLayout, write_layout
    from jitc.supervisor.events import EventLog
    from jitc import warmset

    old = os.umask(umask)
    try:
        log = EventLog(tmp_path / "events.jsonl", stream=open(os.devnull, "w"))
        log.emit("start", 0)
        log.close()
        path = write_layout(tmp_path / "root", StageLayout(0, 2, False, (("w", "F32", (2,)),)))
        os.environ["JITC_RUN_DIR"] = str(tmp_path)
        try:
            warmset.record(0)
        finally:
            del os.environ["JITC_RUN_DIR"]
    finally:
        os.umask(old)
    for f in (tmp_path / "events.jsonl", path, tmp_path / warmset.FILE):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    for d in (tmp_path / "root", path.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_socket_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    from jitc.supervisor.server import Server
    old = os.umask(0)
    try:
        server = Server(tmp_path / "s.sock")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "s.sock").st_mode) == 0o600
    finally:
        server.close()


def test_supervised_run_with_umask_0_leaves_only_private_files(tmp_path: Path) -> None:
    """A real recovery (torchrun, two ranks, the real libjitc.so writing stripes and .done
    records, the supervisor publishing the manifest) under umask 0: every directory under
    the run dir is 0700, every file 0600."""
    from tests.e2e.conftest import BIN, clean_env, torchrun
    run_dir, out = tmp_path / "run", tmp_path / "out.pt"
    cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir), "--hang-timeout", "3",
           "--inject", "crash@rank=1,step=4", "--", *torchrun(2, 8, out)]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(0), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {"dirs": 0, "files": 0}
    wrong = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        for name in dirnames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            seen["dirs"] += 1
            if mode != 0o700:
                wrong.append((os.path.join(dirpath, name), oct(mode)))
        for name in filenames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            seen["files"] += 1
            if mode != 0o600:
                wrong.append((os.path.join(dirpath, name), oct(mode)))
    assert not wrong, wrong
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    names = {p.name for p in run_dir.rglob("*")}
    assert "manifest.json" in names and "events.jsonl" in names
    assert any(n.endswith(".safetensors") for n in names) and any(n.endswith(".done") for n in names)
