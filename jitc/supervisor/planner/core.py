"""The recovery planner: every decision about a failure, made once, with no I/O.

    reports (reports.py) ──> Planner.feed(report, now) ──> commands (commands.py)
                             Planner.tick(now, launcher_rc)

It owns the attempt's state machine (state.State), what is known of each rank, the
failures seen and their root cause (classify.py), the hang backstop, the settle window,
the recovery of the attempt (snapshot_run.py, methods.py) and what follows it: restart
from the published snapshot, fall back, or give up (policy.py). It never touches a socket,
a process or a file: the shell (loop.py) feeds it and carries out its commands, and runs
the slow ones (``Work``) off its loop. A rank is a number; which socket or machine its
reports came through does not matter here.

``replayed`` in the ``resumed`` event: let L be the largest step index any rank reported
as *started* in the attempt before the restart (``step`` of PROGRESS — the step now
running — or of FAILURE), and R the ``step`` of the RESUMED message (the first step the
restarted job runs). ``replayed = max(0, L - R + 1)``: the number of steps whose execution
had begun before the failure and that run again. Invariant I1 makes it at most 1 for a JIT
snapshot; it is null when the previous attempt reported no step.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from ... import failures
from ...causes import Cause
from ..classify import Failure, root_causes
from ..options import Options
from ..policy import RestartPolicy
from ..server import RankInfo, phase_index, phase_name
from ..state import ALLOWED, ExitCode, State
from . import commands as C
from . import reports as R
from .snapshot_run import Limits, Outcome, SnapshotRun


class Planner:
    def __init__(self, opts: Options):
        self.opts = opts
        self.policy = RestartPolicy(opts.max_restarts)
        self.state = State.STARTING
        self.attempt = 0
        self.resume: Path | None = None
        self.root_history: list[int | None] = []
        self.prev_last_started: int | None = None
        self.finished: C.Finish | None = None
        self._out: list[Any] = []
        self._after_stop: tuple[str, Any] | None = None   # why the job is being stopped
        self._reset_attempt()

    def _reset_attempt(self) -> None:
        self.ranks: dict[int, RankInfo] = {}
        self.failures: list[Failure] = []
        self.records: dict[int, tuple[dict[str, Any], float]] = {}   # id(failure) -> held event
        self.first_failure_at: float | None = None
        self.recovery: SnapshotRun | None = None
        self.roots: list[Failure] = []
        self.last_started: int | None = None
        self.resumed_ranks: set[int] = set()
        self.told_hang_s: dict[int, float] = {}   # rank -> its watchdog's timeout (PROGRESS)
        self.protected = self.resume is not None
        self.job_pid: int | None = None
        self.launcher_rc: int | None = None
        self._stop_sent = False     # StopJob issued in this attempt
        self._job_down = False      # ... and carried out
        self._checked = False       # the recovery's outcome is in and the run dir is there
        self._checking = False      # ... CheckRunDir sent

    # -- the interface -------------------------------------------------------------------
    def begin(self, now: float = 0.0) -> list[Any]:
        return [C.StartJob(self.attempt, self.resume)]

    def allows_restart(self, attempt: int) -> bool:
        return self.policy.allows_restart(attempt)

    def feed(self, report: Any, now: float) -> list[Any]:
        handler = getattr(self, "_on_" + type(report).__name__)
        handler(report, now)
        return self._take()

    def tick(self, now: float, launcher_rc: int | None = None) -> list[Any]:
        """The clock moved (and, polled, how the launcher ended if it has; see _launcher)."""
        if launcher_rc is not None:
            self.launcher_rc = launcher_rc
        if self.state is State.RUNNING:
            self._check_hang(now)
        if self.state is State.SETTLING and self._settled(now):
            self._decide(now)
        if self.state is State.RECOVERING:
            self._run(self.recovery.tick(now), now)
        return self._take()

    # -- reports from ranks --------------------------------------------------------------
    def _on_Hello(self, r: R.Hello, now: float) -> None:
        self.ranks[r.rank] = RankInfo(r.rank, pid=r.pid, shard=r.shard or 0,
                                      num_shards=r.num_shards or 1, world_size=r.world_size,
                                      node=r.node, last_change=now)
        if self.recovery is not None and self.state is State.RECOVERING:
            self._run(self.recovery.on_hello(r.rank, now), now)

    def _on_Progress(self, r: R.Progress, now: float) -> None:
        info = self.ranks[r.rank]
        self.protected = True   # step accounting means protect() registered state
        key = (r.step, r.completed, phase_index(r.phase))
        if key != (info.step, info.completed, info.phase):
            info.step, info.completed, info.phase = key
            info.last_change = now
        if isinstance(r.step_time, (int, float)) and r.step_time > 0:
            info.step_times.append(float(r.step_time))
        if isinstance(r.hang_timeout, (int, float)) and r.hang_timeout > 0:
            self.told_hang_s[r.rank] = float(r.hang_timeout)
        self._started(r.step)

    def _on_Failed(self, r: R.Failed, now: float) -> None:
        f = r.failure
        self._started(f.step)
        if f.rank is not None and self.ranks.get(f.rank) is not None and self.ranks[f.rank].failed:
            return
        self._record(f, now)

    def _on_Goodbye(self, r: R.Goodbye, now: float) -> None:
        self.ranks[r.rank].goodbye = True

    def _on_FaultInjected(self, r: R.FaultInjected, now: float) -> None:
        # The fault fires inside a step whose PROGRESS may not have been sent yet
        # (progress is throttled): the report is the freshest position of this rank.
        info = self.ranks[r.rank]
        if isinstance(r.step, int):
            info.step, info.phase, info.last_change = r.step, phase_index(r.phase), now
            self._started(r.step)
        self._emit_at("fault_injected", now, dict(rank=r.rank, step=r.step, kind=r.kind,
                                                   phase=r.phase))

    def _on_Resumed(self, r: R.Resumed, now: float) -> None:
        if isinstance(r.step, int) and r.rank not in self.resumed_ranks:
            self.resumed_ranks.add(r.rank)
            replayed = (None if self.prev_last_started is None
                        else max(0, self.prev_last_started - r.step + 1))
            self._emit("resumed", rank=r.rank, step=r.step, replayed=replayed,
                       manifest=r.manifest)

    def _on_StateAnswer(self, r: R.StateAnswer, now: float) -> None:
        self.ranks[r.rank].state = r.body
        if self.recovery is not None and self.state is State.RECOVERING:
            self._run(self.recovery.on_state(r.rank, r.body, now), now)

    def _on_SnapshotDone(self, r: R.SnapshotDone, now: float) -> None:
        if self.recovery is not None and self.state is State.RECOVERING:
            self._run(self.recovery.on_snapshot_done(r.rank, r.body, now), now)

    def _on_Gone(self, r: R.Gone, now: float) -> None:
        info = self.ranks.get(r.rank)
        if info is None:
            return
        info.connected = False
        if info.goodbye:
            return
        if self.state in (State.RUNNING, State.SETTLING) and not info.failed:
            # Channel closed without GOODBYE: the process is gone (SIGKILL, OOM kill, ...).
            self._record(Failure(rank=r.rank, kind=failures.CRASH, ts=now, step=info.step,
                                 phase=info.phase), now)
        if self.recovery is not None and self.state is State.RECOVERING:
            self._run(self.recovery.on_gone(r.rank, now), now)

    # -- reports from the shell ----------------------------------------------------------
    def _on_JobStarted(self, r: R.JobStarted, now: float) -> None:
        self.job_pid = r.pid
        self._goto(State.RUNNING)

    def _on_StartFailed(self, r: R.StartFailed, now: float) -> None:
        # Gone since cli.py checked it (a restart), or not loadable.
        self._emit("gave_up", kind="exec_failed", reason=r.cause.text, **r.cause.fields())
        self._finish(ExitCode.JOB_FAILED, r.cause.text)

    def _on_JobExited(self, r: R.JobExited, now: float) -> None:
        rc = self.launcher_rc = r.returncode
        if self.state is not State.RUNNING:
            return
        waiting = [k for k, i in self.ranks.items() if i.connected and not i.goodbye]
        if rc == 0 and not waiting:
            self._stop("finished", roots=[])
            return
        if not any(not f.secondary for f in self.failures):
            extra: dict[str, Any] = {"exit_code": rc}
            if rc < 0:
                extra["signal"] = signal.Signals(-rc).name
            if rc == 0:
                extra["detail"] = f"job exited 0 while ranks {waiting} were still running"
            self._record(Failure(rank=None, kind=failures.EXIT, ts=now, extra=extra), now)

    def _on_WorkDone(self, r: R.WorkDone, now: float) -> None:
        if self.recovery is not None and self.state is State.RECOVERING:
            self._run(self.recovery.on_work(r, now), now)

    def _on_RunDirChecked(self, r: R.RunDirChecked, now: float) -> None:
        if r.lost is not None:    # what failed in the recovery may be its doing: say that
            self._on_RunDirLost(R.RunDirLost(r.lost), now)
            return
        self._checked = True
        self._goto(State.STOPPING)
        outcome = self.recovery.outcome
        if self._job_down:          # stopped once every stripe was written
            self._restart_or_give_up(outcome)
        elif not self._stop_sent:
            published = outcome.protected and outcome.manifest is not None
            self._stop("recovered", roots=self.roots, published=published)

    def _on_RunDirLost(self, r: R.RunDirLost, now: float) -> None:
        """Stop: no attempt can work without its run dir (socket, snapshots, event log)."""
        self._stop("run_dir_lost", roots=[], detail=r.cause)

    def _on_Interrupted(self, r: R.Interrupted, now: float) -> None:
        self._stop("interrupted", roots=[], detail=r)

    def _on_JobStopped(self, r: R.JobStopped, now: float) -> None:
        why, detail = self._after_stop or ("", None)
        self._after_stop = None
        self._job_down = True
        if why == "written":
            if self._checked:
                self._restart_or_give_up(self.recovery.outcome)
        elif why == "finished":
            self._emit("finished", exit_code=0)
            self._finish(ExitCode.SUCCESS, "finished")
        elif why == "run_dir_lost":
            self._emit("gave_up", kind="run_dir_lost",
                       reason=f"{detail.text}; stopped the job (its event log went with the "
                              "directory)", **detail.fields())
            self._finish(ExitCode.JOB_FAILED, detail.text)
        elif why == "interrupted":
            self._emit("gave_up", reason=f"supervisor interrupted by {detail.name}",
                       kind="interrupted", signal=detail.name)
            code = ExitCode.INTERRUPTED if detail.signum == signal.SIGINT else ExitCode.TERMINATED
            self._finish(code, f"interrupted by {detail.name}")
        elif why == "recovered":
            self._restart_or_give_up(self.recovery.outcome)

    # -- failures ------------------------------------------------------------------------
    def _record(self, failure: Failure, now: float) -> None:
        if not failure.fatal:
            # Recoverable (jitc/failure_kinds.def): logged, and nothing stops or restarts.
            self._emit("failure_detected", rank=failure.rank, step=failure.step,
                       kind=failure.kind, phase=phase_name(failure.phase),
                       severity=failure.severity.value, **failure.extra)
            return
        node = None
        if failure.rank is not None and failure.rank in self.ranks:
            self.ranks[failure.rank].failed = True
            node = self.ranks[failure.rank].node
        self.failures.append(failure)
        # Stamped now, written once the root cause is chosen (``_decide``) so that the
        # record itself says whether it is the root cause.
        fields = dict(rank=failure.rank, step=failure.step, kind=failure.kind,
                      phase=phase_name(failure.phase), severity=failure.severity.value,
                      progress=list(failure.progress) if failure.progress is not None else None,
                      secondary=True if failure.secondary else None, node=node,
                      **failure.extra)
        if self.state is State.RUNNING:
            self.records[id(failure)] = (fields, now)
            self.first_failure_at = now
            self._goto(State.SETTLING)
        elif self.state is State.SETTLING:
            self.records[id(failure)] = (fields, now)
        else:   # late report: the root cause is already chosen
            self._emit_at("failure_detected", now, fields)

    def _check_hang(self, now: float) -> None:
        """Backstop for a rank whose watchdog cannot report (e.g. the whole process is
        stopped): no PROGRESS change for longer than the hang timeout plus a margin."""
        limits = self.opts.limits
        stalled = False
        for info in self.ranks.values():
            if not info.connected or info.goodbye or info.step is None:
                continue
            # The rank's own deadline as its watchdog told it, else the same rule on the
            # step times seen here (a rank that never said): the backstop fires after it.
            timeout = self.told_hang_s.get(info.rank) or limits.hang_timeout(list(info.step_times))
            if now - info.last_change > limits.backstop_s(timeout):
                stalled = True
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
        waited = now - self.first_failure_at
        if (self.opts.topology is not None and waited < self.opts.node_timeout_s + self.opts.settle_s
                and all(f.secondary for f in self.failures)):
            # Several nodes, only "a peer failed" so far: the failed rank's report may be on
            # its way, or its node gone silent (lost after node_timeout_s). Decide on the
            # root cause, not without it.
            return False
        if waited >= self.opts.settle_s:
            return True
        # Early only once every rank of the world has said HELLO: a rank still starting
        # up is not accounted for.
        world = max((i.world_size or 0 for i in self.ranks.values()), default=0)
        return (len(self.ranks) >= world
                and all(i.failed or not i.connected for i in self.ranks.values()))

    def _decide(self, now: float) -> None:
        self._silent_in_a_hang(now)
        self.roots = root_causes(self.failures)
        blamed = {id(f) for f in self.roots}
        for f in self.failures:
            fields, at = self.records.pop(id(f))
            if id(f) in blamed:
                fields["root_cause"] = True
            self._emit_at("failure_detected", at, fields)
        excluded = {f.rank for f in self.roots if f.rank is not None}
        # The table's `state` column: a rank whose own code, device or process failed
        # never writes, even when it is not the root cause.
        excluded |= {f.rank for f in self.failures if f.rank is not None and not f.trusted}
        why = {f.rank: f.kind for f in reversed(self.failures) if f.rank in excluded}
        self.recovery = SnapshotRun(
            attempt=self.attempt, ranks=self.ranks, excluded=excluded, protected=self.protected,
            limits=Limits(self.opts.query_timeout_s, self.opts.snapshot_wait_s),
            why_excluded=why, context=self._launcher)
        self._goto(State.RECOVERING)
        self._run(self.recovery.start(now), now)

    def _silent_in_a_hang(self, now: float) -> None:
        """Every primary report is a hang: a rank that said nothing (stopped, or its own
        deadline is later) takes part too, at its last known progress (what PROGRESS said;
        nothing says it moved since). Else the waiting peers, the only ones to report,
        would be blamed for the straggler they wait for."""
        primary = [f for f in self.failures if not f.secondary]
        if not primary or any(f.kind not in failures.HANG_KINDS for f in primary):
            return
        reported = {f.rank for f in self.failures}
        for info in sorted(self.ranks.values(), key=lambda i: i.rank):
            if (info.rank not in reported and info.connected and not info.goodbye
                    and info.step is not None):
                self._record(Failure(
                    rank=info.rank, kind=failures.HANG, ts=now, step=info.step, phase=info.phase,
                    progress=(info.completed or 0, info.phase),
                    extra={"detail": f"no report; silent for {now - info.last_change:.1f}s "
                                     "(its last progress)"}), now)

    def _launcher(self) -> str | None:
        """How the job's top process (the launcher) ended, if it has: the ranks it leaves
        alive are healthy replicas (its death is not theirs); if they went with it, this is
        why nothing could be saved. The shell polls it (tick's ``launcher_rc``): when the
        ranks die with it their sockets may close before its pidfd is read."""
        rc = self.launcher_rc
        if not rc:
            return None
        try:
            how = f"by {signal.Signals(-rc).name}" if rc < 0 else f"with status {rc}"
        except ValueError:
            how = f"by signal {-rc}"
        lost = sorted(r for r, i in self.ranks.items() if not i.connected and not i.goodbye)
        return (f"the launcher (pid {self.job_pid}) exited {how}"
                + (f" and ranks {lost} went with it" if lost else ""))

    # -- after the recovery --------------------------------------------------------------
    def _run(self, commands: list[Any], now: float) -> None:
        """Pass on a recovery's commands. Once every stripe is written the job is stopped
        (its healthy ranks would only train on, steps to replay) while the snapshot is
        published; once the recovery has an outcome, the run dir is checked."""
        self._out.extend(commands)
        if self.state is not State.RECOVERING:
            return
        if self.recovery.written and not self._stop_sent:
            self._stop("written", roots=self.roots, published=True)
        if self.recovery.outcome is not None and not self._checking:
            self._checking = True
            self._out.append(C.CheckRunDir())

    def _restart_or_give_up(self, outcome: Outcome) -> None:
        roots = [f.rank for f in self.roots]
        self.root_history.append(roots[0] if roots else None)
        self._out.append(C.Sweep())   # the attempt's writers are gone: their temporaries too
        cause = outcome.cause.fields() if outcome.cause is not None else {}
        # The limit decides first: with no restart left, whether a resume point exists
        # does not matter (a published snapshot stays on disk for a manual restart).
        if not self.policy.allows_restart(self.attempt):
            reason = f"restarts exhausted (--max-restarts {self.opts.max_restarts})"
            if outcome.reason:
                reason += f"; this attempt's snapshot failed: {outcome.reason}"
            self._emit("gave_up", reason=reason, root_cause=roots or None, **cause)
            self._finish(ExitCode.RESTARTS_EXHAUSTED, reason)
            return
        if outcome.gave_up:
            self._emit("gave_up", reason=outcome.gave_up, root_cause=roots or None, **cause)
            self._finish(ExitCode.JOB_FAILED, outcome.gave_up)
            return
        self.resume = outcome.manifest if outcome.protected else None
        self.prev_last_started = self.last_started
        self.attempt += 1
        self._emit("restart", step=outcome.step, resume=str(self.resume) if self.resume else None,
                   fallback=outcome.fallback or None, root_cause=roots or None,
                   reason=outcome.reason, **cause)
        self._reset_attempt()
        self._goto(State.STARTING)
        self._out.append(C.StartJob(self.attempt, self.resume))

    # -- plumbing ------------------------------------------------------------------------
    def _stop(self, why: str, roots: list[Failure], published: bool = False,
              detail: Any = None) -> None:
        self._stop_sent = True
        self._after_stop = (why, detail)
        self._out.append(C.StopJob([f.rank for f in roots] if roots else None,
                                   roots[0].kind if roots else None, published))

    def _started(self, step: Any) -> None:
        if isinstance(step, int) and (self.last_started is None or step > self.last_started):
            self.last_started = step

    def _goto(self, new: State) -> None:
        if new not in ALLOWED[self.state]:
            raise RuntimeError(f"bad transition {self.state} -> {new}")
        self.state = new

    def _finish(self, code: ExitCode, message: str) -> None:
        self.state = State.DONE
        self.finished = C.Finish(code, message)
        self._out.append(self.finished)

    def _emit(self, event: str, **fields: Any) -> None:
        self._out.append(C.Emit(event, self.attempt, fields))

    def _emit_at(self, event: str, at: float, fields: dict[str, Any]) -> None:
        self._out.append(C.Emit(event, self.attempt, fields, at=at))

    def _take(self) -> list[Any]:
        out, self._out = self._out, []
        return out
