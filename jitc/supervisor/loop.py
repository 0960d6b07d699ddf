"""The supervisor's event loop: one selector over the listening socket, the rank
connections and a pidfd of the job's top process, woken at least every ``tick_s``.

``_run_once(now)`` does one pass and is what tests drive; ``run()`` only sets up, loops
and cleans up. The state machine is ``state.State`` (transitions documented there).

``replayed`` in the ``resumed`` event: let L be the largest step index any rank reported
as *started* in the attempt before the restart (``step`` of PROGRESS — the step now
running — or of FAILURE), and R the ``step`` of the RESUMED message (the first step the
restarted job runs). ``replayed = max(0, L - R + 1)``: the number of steps whose execution
had begun before the failure and that run again. Invariant I1 makes it at most 1 for a JIT
snapshot; it is null when the previous attempt reported no step.
"""
from __future__ import annotations

import os
import selectors
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from .. import env, failures, private
from ..causes import Cause, from_oserror
from ..errors import UsageError
from ..faults import join_specs
from ..tmpfiles import sweep
from ..protocol import Message, Msg
from .classify import Failure, root_causes
from .events import EventLog
from .options import Options
from .policy import RestartPolicy
from .process import Job, become_subreaper, child_setup, preload_env, reap_orphans
from .recovery import Outcome, Recovery
from .rundir import CHECK_EVERY_S, RunDirWatch
from .server import Connection, RankInfo, Server, hello_refusal, phase_index, phase_name
from .standby import Plan, Standby, plan
from .state import ALLOWED, ExitCode, RunResult, State

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
            import jitc.snapshot  # noqa: F401
        except Exception:      # recovery reports the failure when it needs the module
            pass
    threading.Thread(target=load, name="jitc-warm-up", daemon=True).start()


class Supervisor:
    def __init__(self, opts: Options, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.opts = opts
        self.stream = stream
        self.clock = clock
        self.policy = RestartPolicy(opts.max_restarts)
        self.state = State.STARTING
        self.attempt = 0
        self.result: RunResult | None = None
        self.interrupted: int | None = None      # signal number, set by the handler
        self.resume: Path | None = None
        self.root_history: list[int | None] = []
        self.events: EventLog | None = None
        self.server: Server | None = None
        self.job: Job | None = None
        self.standby_plan: Plan | None = None
        self.standby: Standby | None = None
        self.sel = selectors.DefaultSelector()
        self.prev_last_started: int | None = None
        self._next_reap = 0.0
        self.run_dir_watch: RunDirWatch | None = None
        self._next_dir_check = 0.0
        self._reset_attempt()

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> RunResult:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._setup()
            while self.result is None:
                try:
                    self._run_once(self.clock())
                except Exception as e:   # a supervisor bug must not orphan the job
                    self._say(f"internal error: {type(e).__name__}: {e}")
                    self._stop_job(self.clock(), roots=[])
                    self._finish(ExitCode.JOB_FAILED, f"internal error: {e}")
            return self.result
        finally:
            if self.job is not None and self.job.returncode is None:
                self._stop_job(self.clock(), roots=[])
            if self.standby is not None:
                self.standby.discard()
            if self.server is not None:
                self.server.close()
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
        self.run_dir_watch = RunDirWatch(self.opts.run_dir)
        become_subreaper()
        if self.opts.standby:
            self.standby_plan = plan(self.opts.command, self._child_env())

    def _setup_run_dir(self) -> None:
        # Refused (exit 2) if another user owns it or can write into it (jitc/private.py).
        private.make_dir(self.opts.run_dir, "run directory")
        private.make_dir(self.opts.snapshot_root, "snapshot root")
        sweep(self.opts.snapshot_root)   # a reused run dir: an earlier run's dead writers
        self.events = EventLog(self.opts.events_path, self.stream)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.interrupted is None:
            self.interrupted = signum

    def _reset_attempt(self) -> None:
        self.ranks: dict[int, RankInfo] = {}
        self.rank_conn: dict[int, Connection] = {}
        self.failures: list[Failure] = []
        self.failure_records: dict[int, dict[str, Any]] = {}   # id(failure) -> event record
        self.first_failure_at: float | None = None
        self.recovery: Recovery | None = None
        self.roots: list[Failure] = []
        self.last_started: int | None = None
        self.resumed_ranks: set[int] = set()
        self.told_hang_s: dict[int, float] = {}   # rank -> its watchdog's timeout (PROGRESS)
        self.protected = self.resume is not None
        self.job_exited = False

    def _goto(self, new: State) -> None:
        if new not in ALLOWED[self.state]:
            raise RuntimeError(f"bad transition {self.state} -> {new}")
        self.state = new

    def _finish(self, code: ExitCode, message: str) -> None:
        if self.state is not State.DONE:
            self.state = State.DONE
        self.result = RunResult(code, self.attempt + 1, message, self.root_history, self.resume)

    # -- one pass --------------------------------------------------------------------------
    def _run_once(self, now: float) -> None:
        if self.interrupted is not None:
            self._interrupt(now)
            return
        if self.run_dir_watch is not None and now >= self._next_dir_check:
            self._next_dir_check = now + CHECK_EVERY_S
            lost = self.run_dir_watch.lost()
            if lost is not None:
                self._run_dir_lost(now, lost)
                return
        if self.state is State.STARTING:
            self._start_job(now)
            return
        pid_ready = False
        for key, _ in self.sel.select(self.opts.tick_s):
            if key.data == "server":
                for conn in self.server.accept():
                    self.sel.register(conn, selectors.EVENT_READ, conn)
            elif key.data == "job":
                pid_ready = True
            else:
                self._read(key.data, now)
        if pid_ready:
            # Every message the job's processes sent is queued by the time its top
            # process is reaped: read them all before judging the exit.
            for key in list(self.sel.get_map().values()):
                if isinstance(key.data, Connection):
                    self._read(key.data, now)
            self._on_job_exit(now)
        if now >= self._next_reap:
            self._next_reap = now + _ORPHAN_REAP_EVERY_S
            reap_orphans(self.job.pid if self.job else None)
        if self.state is State.RUNNING:
            self._check_hang(now)
        if self.state is State.SETTLING and self._settled(now):
            self._decide(now)
        if self.state is State.RECOVERING:
            outcome = self.recovery.tick(now)
            if outcome is not None:
                self._after_recovery(outcome, now)

    # -- job -------------------------------------------------------------------------------
    def _child_env(self) -> dict[str, str]:
        child_env = dict(os.environ)
        child_env.update(self.opts.extra_env)
        child_env[env.LD_PRELOAD] = preload_env(child_env, self.opts.lib)
        child_env[env.SOCKET] = str(self.server.path)
        child_env[env.RUN_DIR] = str(self.opts.run_dir.resolve())
        child_env[env.DIR] = str(self.opts.snapshot_root.resolve())
        child_env[env.ATTEMPT] = str(self.attempt)
        if self.opts.injects:
            child_env[env.INJECT] = join_specs(list(self.opts.injects))
        # The shim is told its limits (jitc/limits.py): the same values this supervisor uses.
        child_env.update(self.opts.limits.to_env())
        if self.resume is not None:
            child_env[env.RESUME] = str(self.resume)
        elif self.attempt > 0:
            child_env.pop(env.RESUME, None)   # never resume a restart from a stale manifest
        return child_env

    def _start_job(self, now: float) -> None:
        child_env = self._child_env()
        popen, self.standby = (self.standby.go(child_env) if self.standby else None), None
        try:
            self.job = Job(self.opts.command, child_env, popen=popen)
        except OSError as e:    # gone since cli.py checked it (a restart), or not loadable
            cause = from_oserror("cannot start", e, self.opts.command[0])
            self.events.emit("gave_up", self.attempt, kind="exec_failed", reason=cause.text,
                             **cause.fields())
            self._finish(ExitCode.JOB_FAILED, cause.text)
            return
        self.sel.register(self.job.pidfd, selectors.EVENT_READ, "job")
        self._goto(State.RUNNING)
        _warm_up_snapshot_module()
        self._prepare_standby()
        self.events.emit("start", self.attempt, pid=self.job.pid, command=list(self.opts.command),
                         run_dir=str(self.opts.run_dir), socket=str(self.server.path),
                         resume=str(self.resume) if self.resume else None,
                         inject=[str(s) for s in self.opts.injects] or None,
                         launcher="standby" if popen else "cold")

    def _prepare_standby(self) -> None:
        """Start the next attempt's launcher warming up beside the job just started (its
        warm-up thread runs at a low priority), if a restart is left."""
        if (self.standby is None and self.standby_plan is not None
                and self.policy.allows_restart(self.attempt)):
            try:
                self.standby = Standby(self.standby_plan, self._child_env(),
                                       child_setup(os.getpid()))
            except OSError as e:
                self.standby_plan = None    # e.g. the interpreter vanished: restart cold
                self._say(f"no standby launcher ({e}); restarts start cold")

    def _on_job_exit(self, now: float) -> None:
        self.sel.unregister(self.job.pidfd)
        self.job_exited = True
        rc = self.job.popen.wait(timeout=self.opts.kill_wait_s)
        if self.state is not State.RUNNING:
            return
        waiting = [r for r, i in self.ranks.items() if i.connected and not i.goodbye]
        if rc == 0 and not waiting:
            self._stop_job(now, roots=[])
            self.events.emit("finished", self.attempt, exit_code=0)
            self._finish(ExitCode.SUCCESS, "finished")
            return
        if not any(not f.secondary for f in self.failures):
            extra: dict[str, Any] = {"exit_code": rc}
            if rc < 0:
                extra["signal"] = signal.Signals(-rc).name
            if rc == 0:
                extra["detail"] = f"job exited 0 while ranks {waiting} were still running"
            self._record(Failure(rank=None, kind=failures.EXIT, ts=now, extra=extra), now)

    def _stop_job(self, now: float, roots: list[Failure], published: bool = False) -> None:
        """Stop the job; ``published``: its snapshot is on disk, nothing of it is needed
        and the restart waits on the stop (torchrun alone takes ~0.5 s over a SIGTERM)."""
        if self.job is None:
            return
        for conn in list(self.rank_conn.values()):
            conn.send(Msg.RELEASE, {})
        if not self.job_exited:
            try:
                self.sel.unregister(self.job.pidfd)
            except (KeyError, ValueError):
                pass
        grace = self.opts.grace_s
        if published:
            grace = min(grace, self.opts.restart_grace_s)
        report = self.job.stop(grace, self.opts.kill_wait_s,
                               spare=self.standby.pid if self.standby else None)
        for key in list(self.sel.get_map().values()):
            if isinstance(key.data, Connection):
                self.sel.unregister(key.data)
                key.data.close()
        self.rank_conn.clear()
        self.events.emit("job_stopped", self.attempt, seconds=round(report.seconds, 6),
                         exit_code=self.job.returncode,
                         root_cause=[f.rank for f in roots] if roots else None,
                         kind=roots[0].kind if roots else None,
                         killed=report.killed or None, survivors=report.survivors or None)
        self.job = None

    # -- messages --------------------------------------------------------------------------
    def _read(self, conn: Connection, now: float) -> None:
        if conn.closed:
            return
        messages, eof = conn.read()
        for msg in messages:
            self._handle(conn, msg, now)
        if eof:
            self.sel.unregister(conn)
            conn.close()
            self._on_disconnect(conn, now)

    def _handle(self, conn: Connection, msg: Message, now: float) -> None:
        body = msg.body
        # Bodies are well typed here (protocol.decode); who may say what is checked here.
        if msg.type is Msg.HELLO:
            why = hello_refusal(conn, body, self.rank_conn, self.ranks)
            if why is not None:
                conn.drop(why)
                return
            rank = body["rank"]
            conn.rank = rank
            self.rank_conn[rank] = conn
            self.ranks[rank] = RankInfo(rank, pid=body.get("pid"), shard=body.get("shard", 0) or 0,
                                        num_shards=body.get("num_shards", 1) or 1,
                                        world_size=body.get("world_size"), last_change=now)
            if self.recovery is not None:
                self.recovery.on_hello(rank, now)
            return
        if conn.rank is None:
            conn.drop(f"{msg.type.name} before HELLO")   # nothing before HELLO is attributable
            return
        if body.get("rank") is not None and body["rank"] != conn.rank:
            conn.drop(f"{msg.type.name} names rank {body['rank']} on rank {conn.rank}'s connection")
            return
        info = self.ranks[conn.rank]
        if msg.type is Msg.PROGRESS:
            self.protected = True   # step accounting means protect() registered state
            key = (body.get("step"), body.get("completed"), phase_index(body.get("phase")))
            if key != (info.step, info.completed, info.phase):
                info.step, info.completed, info.phase = key
                info.last_change = now
            st = body.get("step_time")
            if isinstance(st, (int, float)) and st > 0:
                info.step_times.append(float(st))
            told = body.get("hang_timeout")
            if isinstance(told, (int, float)) and told > 0:
                self.told_hang_s[conn.rank] = float(told)
            self._started(body.get("step"))
        elif msg.type is Msg.FAILURE:
            self._started(body.get("step"))
            if not info.failed:
                self._record(Failure.from_message(body, now, conn.rank), now)
        elif msg.type is Msg.GOODBYE:
            info.goodbye = True
        elif msg.type is Msg.FAULT_INJECTED:
            # The fault fires inside a step whose PROGRESS may not have been sent yet
            # (progress is throttled): the report is the freshest position of this rank.
            step, phase = body.get("step"), body.get("phase")
            if isinstance(step, int):
                info.step, info.phase, info.last_change = step, phase_index(phase), now
                self._started(step)
            self.events.emit("fault_injected", self.attempt, rank=conn.rank, step=step,
                             kind=body.get("kind"), phase=phase)
        elif msg.type is Msg.RESUMED:
            step = body.get("step")
            if isinstance(step, int) and conn.rank not in self.resumed_ranks:
                self.resumed_ranks.add(conn.rank)
                replayed = (None if self.prev_last_started is None
                            else max(0, self.prev_last_started - step + 1))
                self.events.emit("resumed", self.attempt, rank=conn.rank, step=step,
                                 replayed=replayed, manifest=body.get("manifest"))
        elif msg.type is Msg.STATE:
            if body.get("shard") is not None and body["shard"] != info.shard:
                conn.drop(f"STATE of rank {conn.rank} names shard {body['shard']}, "
                          f"its HELLO said {info.shard}")
                return
            info.state = body
            if self.recovery is not None:
                self.recovery.on_state(conn.rank, body, now)
        elif msg.type is Msg.SNAPSHOT_DONE:
            if self.recovery is not None:
                self.recovery.on_snapshot_done(conn.rank, body, now)

    def _started(self, step: Any) -> None:
        if isinstance(step, int) and (self.last_started is None or step > self.last_started):
            self.last_started = step

    def _on_disconnect(self, conn: Connection, now: float) -> None:
        if conn.rank is None or self.rank_conn.get(conn.rank) is not conn:
            return
        info = self.ranks[conn.rank]
        info.connected = False
        del self.rank_conn[conn.rank]
        if info.goodbye:
            return
        if self.state in (State.RUNNING, State.SETTLING) and not info.failed:
            # Socket EOF without GOODBYE: the process is gone (SIGKILL, OOM kill, ...).
            self._record(Failure(rank=conn.rank, kind=failures.CRASH, ts=now, step=info.step,
                                 phase=info.phase), now)
        if self.recovery is not None:
            self.recovery.on_disconnect(conn.rank, now)

    # -- failures --------------------------------------------------------------------------
    def _record(self, failure: Failure, now: float) -> None:
        if not failure.fatal:
            # Recoverable (jitc/failure_kinds.def): logged, and nothing stops or restarts.
            self.events.emit("failure_detected", self.attempt, rank=failure.rank,
                             step=failure.step, kind=failure.kind,
                             phase=phase_name(failure.phase), severity=failure.severity.value,
                             **failure.extra)
            return
        if failure.rank is not None and failure.rank in self.ranks:
            self.ranks[failure.rank].failed = True
        self.failures.append(failure)
        # Stamped now, written once the root cause is chosen (``_decide``) so that the
        # record itself says whether it is the root cause.
        rec = self.events.record(
            "failure_detected", self.attempt, rank=failure.rank, step=failure.step,
            kind=failure.kind, phase=phase_name(failure.phase), severity=failure.severity.value,
            progress=list(failure.progress) if failure.progress is not None else None,
            secondary=True if failure.secondary else None, **failure.extra)
        self.failure_records[id(failure)] = rec
        if self.state is State.RUNNING:
            self.first_failure_at = now
            self._goto(State.SETTLING)
        elif self.state is not State.SETTLING:
            self.events.write(rec)   # late report: the root cause is already chosen

    def _check_hang(self, now: float) -> None:
        """Backstop for a rank whose watchdog cannot report (e.g. the whole process is
        stopped): no PROGRESS change for longer than the hang timeout plus a margin."""
        stalled = []
        for info in self.ranks.values():
            if not info.connected or info.goodbye or info.step is None:
                continue
            # The rank's own deadline as its watchdog told it, else the same rule on the
            # step times seen here (a rank that never said): the backstop fires after it.
            timeout = self.told_hang_s.get(info.rank) or self.opts.limits.hang_timeout(
                list(info.step_times))
            if now - info.last_change > self.opts.limits.backstop_s(timeout):
                stalled.append((info, timeout))
        if not stalled:
            return
        for info in sorted(self.ranks.values(), key=lambda i: i.rank):
            if info.connected and not info.goodbye and info.step is not None:
                self._record(Failure(
                    rank=info.rank, kind=failures.HANG, ts=now, step=info.step, phase=info.phase,
                    progress=(info.completed or 0, info.phase),
                    extra={"detail": f"no progress for {now - info.last_change:.1f}s "
                                     "(supervisor backstop)"}), now)

    def _settled(self, now: float) -> bool:
        if now - self.first_failure_at >= self.opts.settle_s:
            return True
        # Early only once every rank of the world has said HELLO: a rank still starting
        # up is not accounted for.
        world = max((i.world_size or 0 for i in self.ranks.values()), default=0)
        return (len(self.ranks) >= world
                and all(i.failed or not i.connected for i in self.ranks.values()))

    def _decide(self, now: float) -> None:
        self.roots = root_causes(self.failures)
        blamed = {id(f) for f in self.roots}
        for f in self.failures:
            rec = self.failure_records[id(f)]
            if id(f) in blamed:
                rec["root_cause"] = True
            self.events.write(rec)
        excluded = {f.rank for f in self.roots if f.rank is not None}
        # The table's `state` column: a rank whose own code, device or process failed
        # never writes, even when it is not the root cause.
        excluded |= {f.rank for f in self.failures if f.rank is not None and not f.trusted}
        why = {f.rank: f.kind for f in reversed(self.failures) if f.rank in excluded}
        self.recovery = Recovery(
            root=self.opts.snapshot_root.resolve(), attempt=self.attempt, ranks=self.ranks,
            excluded=excluded, protected=self.protected, events=self.events,
            send=self._send, query_timeout_s=self.opts.query_timeout_s,
            snapshot_timeout_s=self.opts.snapshot_wait_s, clock=self.clock,
            why_excluded=why, context=self._launcher_exit())
        self._goto(State.RECOVERING)
        self.recovery.start(now)

    def _launcher_exit(self) -> str | None:
        """How the job's top process (the launcher) ended, if it has: the ranks it leaves
        alive are healthy replicas (its death is not theirs); if they went with it, this is
        why nothing could be saved. Polled, not waited for: when the ranks die with it their
        sockets may close before its pidfd is read."""
        rc = self.job.returncode if self.job is not None else None
        if not rc:
            return None
        try:
            how = f"by {signal.Signals(-rc).name}" if rc < 0 else f"with status {rc}"
        except ValueError:
            how = f"by signal {-rc}"
        lost = sorted(r for r, i in self.ranks.items() if not i.connected and not i.goodbye)
        return (f"the launcher (pid {self.job.pid}) exited {how}"
                + (f" and ranks {lost} went with it" if lost else ""))

    def _send(self, rank: int, mtype: Msg, body: dict[str, Any]) -> bool:
        conn = self.rank_conn.get(rank)
        return conn is not None and conn.send(mtype, body)

    def _after_recovery(self, outcome: Outcome, now: float) -> None:
        lost = self.run_dir_watch.lost() if self.run_dir_watch is not None else None
        if lost is not None:    # what failed in the recovery may be its doing: say that
            self._run_dir_lost(now, lost)
            return
        self._goto(State.STOPPING)
        roots = self.roots
        root_ranks = [f.rank for f in roots]
        self.root_history.append(root_ranks[0] if root_ranks else None)
        self._stop_job(now, roots, published=outcome.protected and outcome.manifest is not None)
        sweep(self.opts.snapshot_root)   # the attempt's writers are gone: their temporaries too
        cause = outcome.cause.fields() if outcome.cause is not None else {}
        # The limit decides first: with no restart left, whether a resume point exists
        # does not matter (a published snapshot stays on disk for a manual restart).
        if not self.policy.allows_restart(self.attempt):
            reason = f"restarts exhausted (--max-restarts {self.opts.max_restarts})"
            if outcome.reason:
                reason += f"; this attempt's snapshot failed: {outcome.reason}"
            self.events.emit("gave_up", self.attempt, reason=reason, root_cause=root_ranks or None,
                             **cause)
            self._finish(ExitCode.RESTARTS_EXHAUSTED, reason)
            return
        if outcome.gave_up:
            self.events.emit("gave_up", self.attempt, reason=outcome.gave_up,
                             root_cause=root_ranks or None, **cause)
            self._finish(ExitCode.JOB_FAILED, outcome.gave_up)
            return
        self.resume = outcome.manifest if outcome.protected else None
        self.prev_last_started = self.last_started
        self.attempt += 1
        self.events.emit("restart", self.attempt, step=outcome.step,
                         resume=str(self.resume) if self.resume else None,
                         fallback=outcome.fallback or None, root_cause=root_ranks or None,
                         reason=outcome.reason, **cause)
        self._reset_attempt()
        self._goto(State.STARTING)

    def _run_dir_lost(self, now: float, lost: Cause) -> None:
        """Stop: no attempt can work without its run dir (socket, snapshots, event log)."""
        self._stop_job(now, roots=[])
        self.events.emit("gave_up", self.attempt, kind="run_dir_lost",
                         reason=f"{lost.text}; stopped the job (its event log went with the "
                                "directory)", **lost.fields())
        self._finish(ExitCode.JOB_FAILED, lost.text)

    def _interrupt(self, now: float) -> None:
        name = signal.Signals(self.interrupted).name
        self._stop_job(now, roots=[])
        self.events.emit("gave_up", self.attempt, reason=f"supervisor interrupted by {name}",
                         kind="interrupted", signal=name)
        code = ExitCode.INTERRUPTED if self.interrupted == signal.SIGINT else ExitCode.TERMINATED
        self._finish(code, f"interrupted by {name}")

    def _say(self, text: str) -> None:
        print(f"jitc: {text}", file=self.stream or sys.stderr, flush=True)
