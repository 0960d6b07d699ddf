"""Start a job so that it can always be stopped completely, and stop it.

The job runs in its own session (so its process group is ours to signal and a Ctrl-C on
the terminal reaches only the supervisor, which then stops the job in order). The direct
child gets PR_SET_PDEATHSIG so it dies with a SIGKILLed supervisor; the supervisor is a
child subreaper so ranks orphaned by a dying launcher re-parent to it and are still found
(and reaped) by the descendant walk in ``stop``.

WARNING: ``stop`` signals every descendant of the supervisor process, not only the job's
process group: ranks may have called setsid(). The only other child the supervisor may
run is the standby launcher of the next attempt (standby.py), which ``stop`` spares by pid.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process. False where unsupported."""
    return _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def preload_env(base: dict[str, str], lib: Path) -> str:
    """LD_PRELOAD with ``lib`` first, keeping the existing entries (minus ``lib`` itself)."""
    existing = [p for p in base.get("LD_PRELOAD", "").replace(" ", ":").split(":")
                if p and p != str(lib)]
    return ":".join([str(lib), *existing])


def child_setup(parent_pid: int):
    """preexec_fn for a job process (or a standby that will become one)."""
    return lambda: _child_setup(parent_pid)


def _child_setup(parent_pid: int) -> None:
    # Runs in the child between fork and exec: only async-signal-safe work (a prctl and a
    # getppid). If the supervisor died before the prctl, the signal would never come.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass
class StopReport:
    seconds: float
    terminated: int        # processes that exited after SIGTERM
    killed: int            # processes that needed SIGKILL
    survivors: list[int]   # pids still alive after everything (should be empty)


class Job:
    """One attempt of the user's command."""

    def __init__(self, command: tuple[str, ...], env: dict[str, str],
                 popen: subprocess.Popen | None = None):
        """Start ``command``, or adopt ``popen``: a process started the same way (its own
        session, the death signal), e.g. a standby that was just told to run it."""
        self.popen = popen or subprocess.Popen(list(command), env=env, start_new_session=True,
                                               preexec_fn=child_setup(os.getpid()))
        self.pid = self.popen.pid
        self.pgid = self.pid     # start_new_session: the child leads its own group
        self.pidfd = os.pidfd_open(self.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def stop(self, grace_s: float, kill_wait_s: float, spare: int | None = None) -> StopReport:
        """SIGTERM the process group and every descendant but ``spare`` (a standby's pid),
        wait ``grace_s``, SIGKILL what is left, wait ``kill_wait_s``. Reaps what it can."""
        t0 = time.monotonic()
        first = _descendants(spare)
        _signal_all(self.pgid, first, signal.SIGTERM)
        deadline = t0 + grace_s
        alive = self._wait(deadline, spare)
        terminated = len(first) - len(alive)
        killed = 0
        if alive:
            # Processes may have forked during the grace period: walk again.
            killed = len(alive)
            _signal_all(self.pgid, alive, signal.SIGKILL)
            alive = self._wait(time.monotonic() + kill_wait_s, spare)
        self.close()
        return StopReport(time.monotonic() - t0, max(terminated, 0), killed,
                          [p.pid for p in alive])

    def _wait(self, deadline: float, spare: int | None) -> list[psutil.Process]:
        """Wait until every descendant exited or the deadline passed; the survivors."""
        while True:
            self.popen.poll()          # reaps the direct child through Popen (keeps its code)
            procs = [p for p in _descendants(spare) if p.pid != self.pid]
            gone, alive = psutil.wait_procs(procs, timeout=0)
            if self.popen.returncode is None:
                alive.append(psutil.Process(self.pid))
            alive = [p for p in alive if _running(p)]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.02)


def reap_orphans(job_pid: int | None) -> None:
    """Reap exited re-parented descendants (we are a subreaper), leaving the job's own
    process to Popen."""
    for p in psutil.Process().children():
        if p.pid != job_pid and not _running(p):
            try:
                os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _descendants(spare: int | None = None) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process().children(recursive=True) if p.pid != spare]
    except psutil.Error:
        return []


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(pgid: int, procs: list[psutil.Process], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
