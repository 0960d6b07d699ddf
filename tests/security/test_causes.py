"""Causes surfaced (issue 13, "Lost causes"): what went wrong with a file is said with its
errno name and path, in the terminal line and the event log, and never as a traceback.

- a full disk during the snapshot: ENOSPC and the stripe's path in the writer's error, the
  gave_up line and event (a real tmpfs of 512 KiB in a private mount namespace);
- a read-only (EROFS: a read-only bind mount) or unreadable/unwritable (EACCES, as a
  non-root user) run dir, and a command that does not exist or cannot be executed: exit 2,
  one line, before anything is created or started;
- a run dir deleted mid-run: the job is stopped with ENOENT and the path, exit 1;
- a writer SIGKILLed mid-write (stalled in the fsync of its temporary by a preloaded stub):
  its ``.tmp.<pid>`` file is removed by whoever owns the snapshot root next (the supervisor
  before a restart or giving up, ``protect()``'s resume scan in shim-only mode), and the
  partial snapshot is never loaded.

Mounts need root and ``unshare -m``; those tests skip cleanly without them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jitc.supervisor.state import ExitCode
from tests.supervisor.conftest import REPO, child_env, fake_job, supervise_argv

BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "ddp_train.py"


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    p = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                       capture_output=True, timeout=30)
    return p.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and unshare -m (mounts)")
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv (drops root's DAC override)")
# Root that honours permission bits (the interpreter under /root stays reachable, which a
# switch to another user would lose): without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def _in_namespace(script: str, *, env: dict[str, str], timeout: float,
                  **vars: str) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (its mounts vanish with it)."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env={**env, **vars},
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jitc: error: "), stderr
    return lines[0]


def _temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if ".tmp" in p.name)


# -- a full disk ------------------------------------------------------------------------

_BIG_WRITE = textwrap.dedent("""
    import sys
    import numpy as np
    from jitc._shim import c_strings, ffi_lib
    ffi, lib = ffi_lib()
    assert lib.jitc_init(0, 0, 1, 0, 1) == 0
    a = np.ones(1 << 20, dtype=np.float32)                      # 4 MiB: never fits
    shape = ffi.new("int64_t[]", [a.size])
    assert lib.jitc_registry_begin() == 0
    assert lib.jitc_registry_add(b"w", ffi.cast("void*", a.ctypes.data), a.nbytes, b"F32",
                                 shape, 1, -1) == 0
    assert lib.jitc_registry_commit() == 0
    assert lib.jitc_step_begin(1) == 0
    stems, _keep = c_strings(["stripe-0-of-1"])
    rc = lib.jitc_snapshot_write(sys.argv[1].encode(), 1, ffi.new("int[]", [0]), stems, 1, 30.0,
                                 ffi.new("int64_t*"))
    print(rc, ffi.string(lib.jitc_last_error()).decode())
    lib.jitc_shutdown(1)
""")


@needs_mount
def test_writer_on_a_full_disk_names_enospc_and_the_path(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    env = dict(child_env(), PROBE=_BIG_WRITE)
    p = _in_namespace('mount -t tmpfs -o size=256k tmpfs "$MNT" && '
                      '"$PY" -c "$PROBE" "$MNT/snap" && find "$MNT" -type f',
                      env=env, timeout=60, MNT=str(mnt), PY=sys.executable)
    assert p.returncode == 0, p.stderr
    first, *files = p.stdout.splitlines()
    assert first.startswith("3 "), first                                   # JITC_E_IO
    assert "ENOSPC (No space left on device)" in first, first
    assert f"{mnt}/snap/stripe-0-of-1.safetensors.tmp." in first, first
    assert files == [], f"the failed writer left {files}"


@needs_mount
@pytest.mark.e2e
def test_full_disk_during_the_snapshot_ends_with_enospc_and_the_path(tmp_path):
    mnt, out = tmp_path / "small", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    script = ('mount -t tmpfs -o size=512k,mode=0700 tmpfs "$MNT" || exit 99\n'
              '"$JITC" supervise --run-dir "$MNT/run" --hang-timeout 3 --no-standby '
              '--inject crash@rank=1,step=4 -- "$TORCHRUN" --nproc-per-node 2 '
              '--monitor-interval 0.1 "$EXAMPLE" --steps 8 --quiet\n'
              'rc=$?; cp "$MNT/run/events.jsonl" "$OUT/"; find "$MNT" -name "*.tmp*" > "$OUT/tmp"\n'
              'exit $rc')
    env = {k: v for k, v in child_env().items() if not k.startswith("JITC_") and k != "LD_PRELOAD"}
    p = _in_namespace(script, env=env, timeout=240, MNT=str(mnt), OUT=str(out),
                      JITC=str(BIN / "jitc"), TORCHRUN=str(BIN / "torchrun"),
                      EXAMPLE=str(EXAMPLE))
    assert p.returncode == ExitCode.JOB_FAILED, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "gave up: every replica of shard 0 failed during the snapshot" in last, last
    assert "ENOSPC (No space left on device)" in last, last
    assert f"{mnt}/run/snapshots/snap-a0-s" in last, last
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    gave_up = events[-1]
    assert gave_up["event"] == "gave_up" and gave_up["errno"] == "ENOSPC", gave_up
    assert gave_up["path"].startswith(f"{mnt}/run/snapshots/snap-a0-s"), gave_up
    assert ".safetensors.tmp." in gave_up["path"] and "ENOSPC" in gave_up["reason"]
    assert (out / "tmp").read_text() == "", "a temporary file was left on the full disk"


# -- run dir and command: usage errors before anything is created ------------------------

def _supervise(run_dir: Path, *command: str, cwd: Path, no_dac: bool = False,
               run_dir_flag: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = supervise_argv(run_dir, "--", *command)
    if not run_dir_flag:
        argv = [a for a in argv if a not in ("--run-dir", str(run_dir))]
    if no_dac:
        argv = [*NO_DAC, *argv]
    return subprocess.run(argv, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("make", ["missing", "not-executable", "directory", "on-path",
                                  "bad-interpreter"])
def test_a_command_that_cannot_run_is_a_usage_error_before_anything(tmp_path, make):
    marker = tmp_path / "started"
    if make == "missing":
        prog, want = "jitc-no-such-command", "command not found: jitc-no-such-command"
    elif make == "not-executable":
        prog = str(tmp_path / "train.sh")
        Path(prog).write_text(f"#!/bin/sh\ntouch {marker}\n")
        want = f"command not executable: {prog}: EACCES"
    elif make == "directory":
        prog, want = str(tmp_path), f"command not executable: {tmp_path}: EACCES"
    elif make == "bad-interpreter":
        prog = str(tmp_path / "train.py")
        Path(prog).write_text(f"#!/opt/no-such-python -u\nopen({str(marker)!r}, 'w')\n")
        Path(prog).chmod(0o755)
        want = (f"command {prog}: its interpreter /opt/no-such-python does not exist: "
                "ENOENT (No such file or directory)")
    else:
        prog, want = "train.sh", "command not executable:"
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / prog).write_text(f"#!/bin/sh\ntouch {marker}\n")
    run_dir = tmp_path / "run"
    if make == "on-path":
        env = dict(child_env(), PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
        p = subprocess.run(supervise_argv(run_dir, "--", prog), env=env, capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    else:
        p = _supervise(run_dir, prog, cwd=tmp_path)
    assert p.returncode == ExitCode.USAGE, p.stderr
    assert want in _one_error_line(p.stderr)
    assert not run_dir.exists() and not marker.exists()


def test_a_command_gone_by_the_restart_ends_the_run_with_its_errno(tmp_path):
    job = tmp_path / "job.sh"
    job.write_text('#!/bin/sh\nrm -f "$0"\nexit 1\n')      # fails once, and is gone
    job.chmod(0o755)
    run_dir = tmp_path / "run"
    p = subprocess.run(supervise_argv(run_dir, "--no-standby", "--", str(job)),
                       env=child_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == ExitCode.JOB_FAILED, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert f"attempt 1: gave up: cannot start {job}: ENOENT (No such file or directory)" in last
    gave_up = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert (gave_up["event"], gave_up["errno"], gave_up["path"]) == ("gave_up", "ENOENT", str(job))


def test_missing_command_with_the_default_run_dir_creates_nothing(tmp_path):
    p = _supervise(tmp_path / "unused", "jitc-no-such-command", cwd=tmp_path,
                   run_dir_flag=False)
    assert p.returncode == ExitCode.USAGE, p.stderr
    assert "command not found" in _one_error_line(p.stderr)
    assert list(tmp_path.iterdir()) == []          # no ./jitc-runs


@needs_mount
@pytest.mark.parametrize("existing", [True, False])
def test_read_only_run_dir_is_a_usage_error_naming_erofs(tmp_path, existing):
    ro, marker = tmp_path / "ro", tmp_path / "started"
    ro.mkdir(mode=0o700)
    run_dir = ro if existing else ro / "run"
    argv = supervise_argv(run_dir, "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    p = subprocess.run(["unshare", "-m", "sh", "-c",
                        'mount --bind "$RO" "$RO" && mount -o remount,bind,ro "$RO" && '
                        'exec "$@"', "sh", *argv],
                       env=dict(child_env(), RO=str(ro)), capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == ExitCode.USAGE, p.stderr
    line = _one_error_line(p.stderr)
    assert str(run_dir) in line and "EROFS (Read-only file system)" in line, line
    assert not marker.exists() and list(ro.iterdir()) == []


@needs_root
@pytest.mark.parametrize("mode,sub", [(0o300, False), (0o500, False), (0o500, True)],
                         ids=["unreadable", "unwritable", "unwritable-parent"])
def test_run_dir_without_permission_is_a_usage_error_naming_eacces(tmp_path, mode, sub):
    top, marker = tmp_path / "top", tmp_path / "started"
    top.mkdir(mode=mode)
    run_dir = top / "run" if sub else top
    p = _supervise(run_dir, sys.executable, "-c", f"open({str(marker)!r}, 'w')",
                   cwd=tmp_path, no_dac=True)
    assert p.returncode == ExitCode.USAGE, p.stderr
    line = _one_error_line(p.stderr)
    assert str(run_dir) in line and "EACCES (Permission denied)" in line, line
    assert not marker.exists() and list(top.iterdir()) == []


def test_what_the_run_dir_setup_cannot_create_is_a_usage_error(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "events.jsonl").mkdir(parents=True)          # in the way of the event log
    run_dir.chmod(0o700)
    p = _supervise(run_dir, sys.executable, "-c", "print('hi')", cwd=tmp_path)
    assert p.returncode == ExitCode.USAGE, p.stderr
    line = _one_error_line(p.stderr)
    assert f"cannot create {run_dir / 'events.jsonl'}: EISDIR (Is a directory)" in line, line


# -- a run dir deleted mid-run -----------------------------------------------------------

@pytest.mark.parametrize("ranks", [False, True], ids=["quiet-job", "ranks-fail-with-it"])
def test_run_dir_deleted_mid_run_stops_the_job_with_enoent(tmp_path, ranks):
    # The fake ranks keep their barrier files in the run dir: they fail as it goes, and the
    # recovery that follows must still end with the run dir as the reason.
    run_dir = tmp_path / "run"
    job = (fake_job(2, "--steps", "3000", "--step-time", "0.02") if ranks
           else [sys.executable, "-c", "import time; time.sleep(60)"])    # a minute of work
    proc = subprocess.Popen(supervise_argv(run_dir, "--no-standby", "--", *job),
                            env=child_env(), stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        events = run_dir / "events.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not events.exists()
                                               or "start" not in events.read_text()):
            time.sleep(0.05)
        time.sleep(1.0)
        while run_dir.exists() and time.monotonic() < deadline:    # ranks may add files
            shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == ExitCode.JOB_FAILED, err
    last = err.strip().splitlines()[-1]
    assert f"run directory {run_dir} vanished: ENOENT (No such file or directory)" in last, last
    assert "event log went with the directory" in last, last
    assert "restart" not in err, err                  # no futile attempts
    assert elapsed < 15, f"noticed after {elapsed:.1f}s"
    assert not run_dir.exists()                       # not made again


def test_run_dir_watch_tells_a_replaced_directory(tmp_path):
    from jitc.supervisor.rundir import RunDirWatch
    d = tmp_path / "run"
    d.mkdir()
    watch = RunDirWatch(d)
    assert watch.lost() is None
    d.rename(tmp_path / "moved")
    d.mkdir()
    lost = watch.lost()
    assert lost is not None and "replaced" in lost.text and lost.path == str(d)
    d.rmdir()
    assert watch.lost().errno == "ENOENT"


# -- the supervisor carries a writer's error ---------------------------------------------

class _Recovery:
    """One SnapshotRun driven as the shell drives it: Work done at once on this disk."""

    def __init__(self, root: Path, log: Path, ranks: int, stream):
        from jitc.supervisor.events import EventLog
        from jitc.supervisor.planner.snapshot_run import Limits, SnapshotRun
        from jitc.supervisor.server import RankInfo
        infos = {r: RankInfo(r, pid=100 + r, shard=0, num_shards=1, world_size=ranks,
                             last_change=0.0) for r in range(ranks)}
        self.root, self.sent = root, []
        self.events = EventLog(log / "events.jsonl", stream or open(os.devnull, "w"))
        self.run = SnapshotRun(attempt=0, ranks=infos, excluded={1}, protected=True,
                               limits=Limits(1.0, 5.0))

    def _do(self, cmds) -> None:
        from jitc.supervisor import work
        from jitc.supervisor.planner import commands as C
        for c in cmds:
            if isinstance(c, C.Send):
                self.sent.append((c.rank, c.type, c.body))
            elif isinstance(c, C.Emit):
                self.events.emit(c.event, c.attempt, echo=c.echo, **c.fields)
            elif isinstance(c, C.Work):
                self._do(self.run.on_work(work.attempt(c.job, c.token, self.root), 0.0))

    def start(self, now):
        self._do(self.run.start(now))

    def on_state(self, rank, body, now):
        self._do(self.run.on_state(rank, body, now))

    def on_snapshot_done(self, rank, body, now):
        self._do(self.run.on_snapshot_done(rank, body, now))

    @property
    def outcome(self):
        return self.run.outcome


def _recovery(root: Path, log: Path, ranks: int = 2, stream=None):
    rec = _Recovery(root, log, ranks, stream)
    return rec, rec.sent


def test_a_writers_enospc_reaches_the_outcome(tmp_path):
    from jitc.protocol import Msg
    root = tmp_path / "snapshots"
    root.mkdir()
    rec, sent = _recovery(root, tmp_path)
    rec.start(0.0)
    rec.on_state(0, {"completed": 7, "usable": True, "nbytes": 64, "shard": 0}, 0.0)
    (_, _, body), = [s for s in sent if s[1] is Msg.SNAPSHOT]
    path = f"{body['dir']}/stripe-0-of-1.safetensors.tmp.4242"
    rec.on_snapshot_done(0, {"id": body["id"], "stripe": 0, "ok": False,
                             "error": f"write {path}: ENOSPC (No space left on device)"}, 0.0)
    out = rec.outcome
    assert out is not None and out.gave_up is not None
    assert out.gave_up.startswith("every replica of shard 0 failed during the snapshot "
                                  f"(rank 0: write {path}: ENOSPC (No space left on device))")
    assert (out.cause.errno, out.cause.path) == ("ENOSPC", path)


def test_a_stripe_reassigned_after_enospc_says_why(tmp_path):
    # Two healthy replicas: one's disk is full, the other writes its stripe too. The run
    # goes on, and the timeline says why the stripe moved.
    import io
    from jitc.protocol import Msg
    from jitc.supervisor.events import read_events
    root = tmp_path / "snapshots"
    root.mkdir()
    out = io.StringIO()
    rec, sent = _recovery(root, tmp_path, ranks=3, stream=out)
    rec.start(0.0)
    for r in (0, 2):
        rec.on_state(r, {"completed": 7, "usable": True, "nbytes": 64, "shard": 0}, 0.0)
    first = [b for r, t, b in sent if t is Msg.SNAPSHOT and r == 0][0]
    error = (f"write {first['dir']}/stripe-0-of-2.safetensors.tmp.77: "
             "ENOSPC (No space left on device)")
    rec.on_snapshot_done(0, {"id": first["id"], "stripe": 0, "ok": False, "error": error}, 0.0)
    moved = [b for r, t, b in sent if t is Msg.SNAPSHOT and r == 2 and b["stripes"] == [0]]
    assert moved and rec.outcome is None                    # rank 2 writes it: no give-up
    ev = [e for e in read_events(tmp_path / "events.jsonl") if e.get("reassigned")]
    assert ev and ev[0]["error"] == error and ev[0]["reassigned_from"] == 0
    assert f"(reassigned from rank 0: {error})" in out.getvalue()


def test_a_vanished_snapshot_root_parent_is_not_made_again(tmp_path):
    root = tmp_path / "run" / "snapshots"
    rec, _ = _recovery(tmp_path / "gone" / "snapshots", tmp_path)
    rec.start(0.0)
    rec.on_state(0, {"completed": 7, "usable": True, "nbytes": 64, "shard": 0}, 0.0)
    out = rec.outcome
    assert out is not None and "ENOENT" in out.gave_up and out.cause.errno == "ENOENT"
    assert not (tmp_path / "gone").exists() and not root.exists()


# -- temporaries of a writer killed mid-write --------------------------------------------

_STALL = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* fsync of a stripe's temporary never returns: its writer is killed mid-write. */
int fsync(int fd) {
  char link[64], target[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n > 0) {
    target[n] = 0;
    if (strstr(target, ".safetensors.tmp.") != NULL) {
      const char* marker = getenv("STALL_MARKER");
      if (marker != NULL) { FILE* f = fopen(marker, "w"); if (f != NULL) fclose(f); }
      for (;;) pause();
    }
  }
  int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  return real(fd);
}
"""


@pytest.fixture(scope="module")
def stall_lib(tmp_path_factory) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler for the stalling stub")
    d = tmp_path_factory.mktemp("stall")
    (d / "stall.c").write_text(_STALL)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(d / "libstall.so"),
                    str(d / "stall.c"), "-ldl"], check=True, timeout=60)
    return d / "libstall.so"


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _writer(d: Path, step: int, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "tests" / "snapshot" / "_writer.py"), "--dir", str(d),
           "--nstripes", "1", "--stripes", "0", "--step", str(step)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_shim_only_resume_removes_a_killed_writers_temporaries(tmp_path, stall_lib,
                                                               monkeypatch):
    from jitc import resume
    from jitc.snapshot import load
    root = tmp_path / "jitc"
    env = {k: v for k, v in child_env().items() if not k.startswith("JITC_")}
    env.pop("LD_PRELOAD", None)
    done = _writer(root / "snap-a0-s3-0", 3, env)
    assert done.wait(timeout=60) == 0, done.stderr.read()
    marker = tmp_path / "stalled"
    killed = _writer(root / "snap-a1-s6-0", 6,
                     dict(env, LD_PRELOAD=str(stall_lib), STALL_MARKER=str(marker)))
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.02)
    assert marker.exists(), killed.stderr.read() if killed.poll() is not None else "no stall"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    left = _temporaries(root)
    assert [p.name for p in left] == [f"stripe-0-of-1.safetensors.tmp.{killed.pid}"]
    assert left[0].stat().st_size > 0                   # killed mid-write, data in it
    stray = root / "snap-a0-s3-0" / f".manifest.json.{_dead_pid()}.{'0' * 32}.tmp"
    stray.write_text("{")                                # a publisher killed mid-write
    mine = root / "snap-a0-s3-0" / f".manifest.json.{os.getpid()}.{'1' * 32}.tmp"
    mine.write_text("{")                                 # a live writer's: kept

    monkeypatch.setenv("JITC_DIR", str(root))
    monkeypatch.delenv("JITC_RESUME", raising=False)
    path, snap = resume.choose(supervised=False)
    assert path is not None and path.parent.name == "snap-a0-s3-0"   # never the partial one
    assert snap.step == 3 and load(path).step == 3
    assert _temporaries(root) == [mine]
    assert not (root / "snap-a1-s6-0" / "manifest.json").exists()


@pytest.mark.e2e
def test_supervisor_removes_the_temporaries_of_a_writer_it_killed(tmp_path, stall_lib):
    # Rank 0's writer stalls in the fsync of its stripe: the snapshot times out, the job is
    # stopped (SIGKILL after --grace) with the temporary half-made; nothing is left of it.
    run_dir = tmp_path / "run"
    env = {k: v for k, v in child_env().items() if not k.startswith("JITC_")}
    env["LD_PRELOAD"] = str(stall_lib)
    cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir), "--hang-timeout", "3",
           "--snapshot-timeout", "3", "--grace", "1", "--no-standby",
           "--inject", "crash@rank=1,step=4", "--", str(BIN / "torchrun"), "--nproc-per-node",
           "2", "--monitor-interval", "0.1", str(EXAMPLE), "--steps", "8", "--quiet"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == ExitCode.JOB_FAILED, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "gave up:" in last and ("timed out" in last or "not finished" in last), last
    snaps = list((run_dir / "snapshots").iterdir())
    assert snaps and not any((s / "manifest.json").exists() for s in snaps)
    assert _temporaries(run_dir) == [], "the killed writer's temporary is still there"


def test_supervisor_start_removes_dead_writers_temporaries(tmp_path):
    # A reused run dir: an earlier run's writer died mid-write.
    run_dir = tmp_path / "run"
    old = run_dir / "snapshots" / "snap-a0-s2-0"
    old.mkdir(parents=True, mode=0o700)
    run_dir.chmod(0o700)
    (run_dir / "snapshots").chmod(0o700)
    stale = old / f"stripe-0-of-1.safetensors.tmp.{_dead_pid()}"
    stale.write_bytes(b"\0" * 100)
    keep = old / "stripe-0-of-1.safetensors"         # not a temporary: not ours to judge
    keep.write_bytes(b"\0" * 100)
    p = _supervise(run_dir, sys.executable, "-c", "print('hi')", cwd=tmp_path)
    assert p.returncode == ExitCode.SUCCESS, p.stderr
    assert not stale.exists() and keep.exists()


def test_event_log_on_a_full_disk_says_so_once_and_keeps_the_timeline(tmp_path):
    import io
    from jitc.supervisor.events import EventLog
    out = io.StringIO()
    log = EventLog(tmp_path / "events.jsonl", out)
    log._file.close()
    log._file = open("/dev/full", "a", encoding="utf-8")     # every write: ENOSPC
    log.emit("start", 0, pid=1)
    log.emit("finished", 0, exit_code=0)
    log.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert "started pid 1" in lines[1] and "finished" in lines[2]
    assert lines[0] == (f"jitc: cannot write {tmp_path / 'events.jsonl'}: ENOSPC (No space left "
                        "on device); events go to this timeline only until it can")
