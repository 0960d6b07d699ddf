"""The supervisor's shell: one selector over the listening socket, the rank connections,
a pidfd of the job's top process and the worker's pipe, woken at least every ``tick_s``.
It decides nothing about failures: it turns what it sees into reports for the planner
(planner/core.py) and carries out the commands it gets back, the slow ones off the loop
(work.py).

``_run_once(now)`` does one pass and is what tests drive; ``run()`` only sets up, loops
and cleans up. The state machine is ``state.State``, owned by the planner.
"""
from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from .. import env, private
from ..causes import Cause, from_oserror
from ..errors import UsageError
from ..faults import join_specs
from ..protocol import Message, Msg
from ..tmpfiles import sweep
from .classify import Failure
from .events import EventLog
from .options import Options
from .planner import Planner
from .planner import commands as C
from .planner import reports as R
from .process import Job, become_subreaper, child_setup, preload_env, reap_orphans
from .rundir import CHECK_EVERY_S, RunDirWatch
from .server import Connection, Server, hello_refusal
from .standby import Plan, Standby, plan
from .state import ExitCode, RunResult, State
from . import work
from .work import Worker

QUICK_WORK = (C.Survey, C.Prepare)

_ORPHAN_REAP_EVERY_S = 1.0
_warm_up_started = False


def _warm_up_snapshot_module() -> None:
    """Import jitc.snapshot (and torch with it: seconds) in the background while the job
    starts, so recovery does not pay for the import on its critical path."""
    global _warm_up_started
    if _warm_up_started:
        return
    _warm_up_started = True

    def load() -> None:
        try:
            import jitc.snapshot.loader  # noqa: F401  (jitc.snapshot alone no longer imports torch)
        except Exception:      # recovery reports the failure when it needs the module
            pass
    threading.Thread(target=load, name="jitc-warm-up", daemon=True).start()


class Supervisor:
    def __init__(self, opts: Options, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.opts = opts
        self.stream = stream
        self.clock = clock
        # Who decides: this node's planner, or on several nodes the head's (cluster/).
        self.planner: Planner | None = Planner(opts) if opts.topology is None else None
        self.brain: Any = self.planner
        self.cluster: Any = None
        self.result: RunResult | None = None
        self.interrupted: int | None = None      # signal number, set by the handler
        self.events: EventLog | None = None
        self.server: Server | None = None
        self.worker: Worker | None = None
        self.job: Job | None = None
        self.job_exited = False
        self.standby_plan: Plan | None = None
        self.standby: Standby | None = None
        self.sel = selectors.DefaultSelector()
        self.rank_conn: dict[int, Connection] = {}
        self._next_reap = 0.0
        self.run_dir_watch: RunDirWatch | None = None
        self._next_dir_check = 0.0
        self._told_interrupt = False
        self._fetching: C.StartJob | None = None
        self._wall_offset = time.time() - clock()

    @property
    def state(self) -> State:
        return self.brain.state

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> RunResult:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._setup()
            self._carry_out(self.brain.begin(self.clock()))
            while self.result is None:
                try:
                    self._run_once(self.clock())
                except Exception as e:   # a supervisor bug must not orphan the job
                    self._say(f"internal error: {type(e).__name__}: {e}")
                    self._stop_job(C.StopJob(None, None))
                    self.result = self._result(ExitCode.JOB_FAILED, f"internal error: {e}")
            return self.result
        finally:
            if self.job is not None and self.job.returncode is None:
                self._stop_job(C.StopJob(None, None))
            if self.standby is not None:
                self.standby.discard()
            if self.server is not None:
                self.server.close()
            if self.worker is not None:
                self.worker.close()
            if self.cluster is not None:
                self.cluster.close()
            if self.events is not None:
                self.events.close()
            for s, handler in old.items():
                signal.signal(s, handler)

    def _setup(self) -> None:
        try:
            self._setup_run_dir()
        except OSError as e:    # cli.py checked access; this is what it cannot foresee
            raise UsageError(f"run directory {self.opts.run_dir}: "
                             f"{from_oserror('cannot create', e).text}") from None
        self.server = Server(self.opts.socket_path(), log=self._say)
        self.sel.register(self.server, selectors.EVENT_READ, "server")
        self.worker = Worker(self.opts.snapshot_root.resolve())
        self.sel.register(self.worker, selectors.EVENT_READ, "work")
        self.run_dir_watch = RunDirWatch(self.opts.run_dir)
        become_subreaper()
        if self.opts.topology is not None:
            from .cluster.node import join
            self.cluster = join(self.opts, self.opts.snapshot_root.resolve(), self._say)
            self.brain = self.cluster.brain
            self.sel.register(self.brain, selectors.EVENT_READ, "brain")
        if self.opts.standby:
            self.standby_plan = plan(self.opts.command, self._child_env(0, None))

    def _setup_run_dir(self) -> None:
        # Refused (exit 2) if another user owns it or can write into it (jitc/private.py).
        private.make_dir(self.opts.run_dir, "run directory")
        private.make_dir(self.opts.snapshot_root, "snapshot root")
        sweep(self.opts.snapshot_root)   # a reused run dir: an earlier run's dead writers
        self.events = EventLog(self.opts.events_path, self.stream)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.interrupted is None:
            self.interrupted = signum

    def _result(self, code: ExitCode, message: str) -> RunResult:
        p = self.brain
        return RunResult(code, p.attempt + 1, message, p.root_history, p.resume)

    # -- one pass --------------------------------------------------------------------------
    def _run_once(self, now: float) -> None:
        if self.interrupted is not None and not self._told_interrupt:
            self._told_interrupt = True
            self._feed(R.Interrupted(self.interrupted, signal.Signals(self.interrupted).name), now)
            return
        if self.run_dir_watch is not None and now >= self._next_dir_check:
            self._next_dir_check = now + CHECK_EVERY_S
            lost = self.run_dir_watch.lost()
            if lost is not None:
                self._feed(R.RunDirLost(lost), now)
                return
        exited: Job | None = None
        for key, _ in self.sel.select(self.opts.tick_s):
            if key.data == "server":
                for conn in self.server.accept():
                    self.sel.register(conn, selectors.EVENT_READ, conn)
            elif isinstance(key.data, Job):
                exited = key.data
            elif key.data == "work":
                for done in self.worker.drain():
                    if done.token < 0:       # the shell's own: a start's state transfer
                        self._fetched(done)
                    else:
                        self._feed(done, now)
            elif key.data == "brain":
                self._carry_out(self.brain.drain(now), now)
            else:
                self._read(key.data, now)
            if self.result is not None:
                return
        if exited is not None and exited is self.job:   # not a job started since in this pass
            # Every message the job's processes sent is queued by the time its top
            # process is reaped: read them all before judging the exit.
            for key in list(self.sel.get_map().values()):
                if isinstance(key.data, Connection):
                    self._read(key.data, now)
            self.sel.unregister(self.job.pidfd)
            self.job_exited = True
            self._feed(R.JobExited(self.job.popen.wait(timeout=self.opts.kill_wait_s)), now)
        if now >= self._next_reap:
            self._next_reap = now + _ORPHAN_REAP_EVERY_S
            reap_orphans(self.job.pid if self.job else None)
        if self.result is None:
            rc = self.job.returncode if self.job is not None else None
            self._carry_out(self.brain.tick(now, launcher_rc=rc), now)

    def _feed(self, report: Any, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self._carry_out(self.brain.feed(report, now), now)

    # -- commands --------------------------------------------------------------------------
    def _carry_out(self, commands: list[Any], now: float | None = None) -> None:
        for cmd in commands:
            if isinstance(cmd, C.Send):
                conn = self.rank_conn.get(cmd.rank)
                if conn is not None:
                    conn.send(cmd.type, cmd.body)
            elif isinstance(cmd, C.Emit):
                # The planner's clock -> the log's wall clock, by one offset: two events
                # of the same instant get the same stamp.
                ts = None if cmd.at is None else cmd.at + self._wall_offset
                self.events.emit(cmd.event, cmd.attempt, echo=cmd.echo, ts=ts, **cmd.fields)
            elif isinstance(cmd, C.Work) and isinstance(cmd.job, QUICK_WORK):
                # A few stats and mkdirs: at once, so the SNAPSHOT follows the answers by
                # one pass (a rank still training moves on while a thread is scheduled).
                self._feed(work.attempt(cmd.job, cmd.token, self.worker.root), now)
            elif isinstance(cmd, C.Work):
                self.worker.submit(cmd)
            elif isinstance(cmd, C.StartJob):
                self._start_job(cmd)
            elif isinstance(cmd, C.StopJob):
                self._feed(self._stop_job(cmd), now)
            elif isinstance(cmd, C.CheckRunDir):
                lost = self.run_dir_watch.lost() if self.run_dir_watch is not None else None
                self._feed(R.RunDirChecked(lost), now)
            elif isinstance(cmd, C.Sweep):
                sweep(self.opts.snapshot_root)
            elif isinstance(cmd, C.Finish):
                self.result = self._result(ExitCode(cmd.code), cmd.message)
            else:
                raise TypeError(f"unknown command {cmd!r}")

    # -- job -------------------------------------------------------------------------------
    def _child_env(self, attempt: int, resume: Path | None) -> dict[str, str]:
        child_env = dict(os.environ)
        child_env.update(self.opts.extra_env)
        child_env[env.LD_PRELOAD] = preload_env(child_env, self.opts.lib)
        child_env[env.SOCKET] = str(self.server.path)
        child_env[env.RUN_DIR] = str(self.opts.run_dir.resolve())
        child_env[env.DIR] = str(self.opts.snapshot_root.resolve())
        child_env[env.ATTEMPT] = str(attempt)
        if self.opts.injects:
            child_env[env.INJECT] = join_specs(list(self.opts.injects))
        # The shim is told its limits (jitc/limits.py): the same values this supervisor uses.
        child_env.update(self.opts.limits.to_env())
        if resume is not None:
            child_env[env.RESUME] = str(resume)
        elif attempt > 0:
            child_env.pop(env.RESUME, None)   # never resume a restart from a stale manifest
        return child_env

    def _start_job(self, cmd: C.StartJob) -> None:
        if cmd.fetch:
            # Shards published on other nodes first (cluster/transfer.py), off the loop.
            self._fetching = cmd
            self.worker.submit(C.Work(-1 - cmd.attempt, cmd))
            return
        self._start_now(cmd)

    def _fetched(self, done: R.WorkDone) -> None:
        cmd, self._fetching = self._fetching, None
        if cmd is None or done.token != -1 - cmd.attempt:
            return                # the job was stopped meanwhile: nothing to start
        if done.error is not None:
            self._feed(R.StartFailed(done.cause or Cause(
                f"fetching the snapshot's state from another node failed: {done.error}")))
            return
        r = done.result
        self.events.emit("state_fetched", cmd.attempt, bytes=r["bytes"], files=r["files"],
                         seconds=round(r["seconds"], 6), source=r["sources"])
        self._start_now(dataclasses.replace(cmd, fetch=()))

    def _start_now(self, cmd: C.StartJob) -> None:
        child_env = self._child_env(cmd.attempt, cmd.resume)
        popen, self.standby = (self.standby.go(child_env) if self.standby else None), None
        try:
            self.job = Job(self.opts.command, child_env, popen=popen)
        except OSError as e:    # gone since cli.py checked it (a restart), or not loadable
            self._feed(R.StartFailed(from_oserror("cannot start", e, self.opts.command[0])))
            return
        self.job_exited = False
        self.sel.register(self.job.pidfd, selectors.EVENT_READ, self.job)
        _warm_up_snapshot_module()
        # Stamped when the job started, before the next standby is spawned (~0.4 s).
        self.events.emit("start", cmd.attempt, pid=self.job.pid, command=list(self.opts.command),
                         node=self.cluster.channel.node if self.cluster is not None else None,
                         run_dir=str(self.opts.run_dir), socket=str(self.server.path),
                         resume=str(cmd.resume) if cmd.resume else None,
                         inject=[str(s) for s in self.opts.injects] or None,
                         launcher="standby" if popen else "cold")
        self._prepare_standby(cmd.attempt, cmd.resume)
        self._feed(R.JobStarted(self.job.pid))

    def _prepare_standby(self, attempt: int, resume: Path | None) -> None:
        """Start the next attempt's launcher warming up beside the job just started (its
        warm-up thread runs at a low priority), if a restart is left."""
        if (self.standby is None and self.standby_plan is not None
                and self.brain.allows_restart(attempt)):
            try:
                self.standby = Standby(self.standby_plan, self._child_env(attempt, resume),
                                       child_setup(os.getpid()))
            except OSError as e:
                self.standby_plan = None    # e.g. the interpreter vanished: restart cold
                self._say(f"no standby launcher ({e}); restarts start cold")

    def _stop_job(self, cmd: C.StopJob) -> R.JobStopped:
        """Stop the job; ``published``: its snapshot is on disk, nothing of it is needed
        and the restart waits on the stop (torchrun alone takes ~0.5 s over a SIGTERM)."""
        self._fetching = None
        if self.job is None:
            return R.JobStopped(0.0, None, 0, [])
        for conn in list(self.rank_conn.values()):
            conn.send(Msg.RELEASE, {})
        if not self.job_exited:
            try:
                self.sel.unregister(self.job.pidfd)
            except (KeyError, ValueError):
                pass
        grace = self.opts.grace_s
        if cmd.published:
            grace = min(grace, self.opts.restart_grace_s)
        report = self.job.stop(grace, self.opts.kill_wait_s,
                               spare=self.standby.pid if self.standby else None)
        for key in list(self.sel.get_map().values()):
            if isinstance(key.data, Connection):
                self.sel.unregister(key.data)
                key.data.close()
        self.rank_conn.clear()
        attempt = self.brain.attempt
        self.events.emit("job_stopped", attempt, seconds=round(report.seconds, 6),
                         exit_code=self.job.returncode, root_cause=cmd.root_cause,
                         kind=cmd.kind, killed=report.killed or None,
                         survivors=report.survivors or None)
        stopped = R.JobStopped(report.seconds, self.job.returncode, report.killed, list(report.survivors or []))
        self.job = None
        return stopped

    # -- messages --------------------------------------------------------------------------
    def _read(self, conn: Connection, now: float) -> None:
        if conn.closed:
            return
        messages, eof = conn.read()
        for msg in messages:
            if conn.closed:     # a message led to StopJob, which closed every connection
                return
            self._handle(conn, msg, now)
        if eof and not conn.closed:
            self.sel.unregister(conn)
            conn.close()
            if conn.rank is not None and self.rank_conn.get(conn.rank) is conn:
                del self.rank_conn[conn.rank]
                self._feed(R.Gone(conn.rank), now)

    def _handle(self, conn: Connection, msg: Message, now: float) -> None:
        """Who may say what on this connection is checked here (bodies are well typed:
        protocol.decode); what it means is the planner's."""
        body = msg.body
        ranks = self.brain.ranks
        if msg.type is Msg.HELLO:
            why = hello_refusal(conn, body, self.rank_conn, ranks)
            if why is not None:
                conn.drop(why)
                return
            conn.rank = rank = body["rank"]
            self.rank_conn[rank] = conn
            self._feed(R.Hello(rank, pid=body.get("pid"), shard=body.get("shard", 0) or 0,
                               num_shards=body.get("num_shards", 1) or 1,
                               world_size=body.get("world_size")), now)
            return
        if conn.rank is None:
            conn.drop(f"{msg.type.name} before HELLO")   # nothing before HELLO is attributable
            return
        rank = conn.rank
        if body.get("rank") is not None and body["rank"] != rank:
            conn.drop(f"{msg.type.name} names rank {body['rank']} on rank {rank}'s connection")
            return
        report = self._report(msg.type, body, rank, now)
        if isinstance(report, str):
            conn.drop(report)
        elif report is not None:
            self._feed(report, now)

    def _report(self, mtype: Msg, body: dict[str, Any], rank: int, now: float) -> Any:
        """The planner's report for one message, or a string: why it is dropped."""
        if mtype is Msg.PROGRESS:
            return R.Progress(rank, body.get("step"), body.get("completed"), body.get("phase"),
                              body.get("step_time"), body.get("hang_timeout"))
        if mtype is Msg.FAILURE:
            return R.Failed(Failure.from_message(body, now, rank))
        if mtype is Msg.GOODBYE:
            return R.Goodbye(rank)
        if mtype is Msg.FAULT_INJECTED:
            return R.FaultInjected(rank, body.get("step"), body.get("kind"), body.get("phase"))
        if mtype is Msg.RESUMED:
            return R.Resumed(rank, body.get("step"), body.get("manifest"))
        if mtype is Msg.STATE:
            shard = self.brain.ranks[rank].shard
            if body.get("shard") is not None and body["shard"] != shard:
                return (f"STATE of rank {rank} names shard {body['shard']}, "
                        f"its HELLO said {shard}")
            return R.StateAnswer(rank, body)
        if mtype is Msg.SNAPSHOT_DONE:
            return R.SnapshotDone(rank, body)
        return None

    def _say(self, text: str) -> None:
        print(f"jitc: {text}", file=self.stream or sys.stderr, flush=True)
