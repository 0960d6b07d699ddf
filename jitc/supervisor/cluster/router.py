"""The head node's side of the planner: one decision for the job, carried out per node.

    reports from every node ──> Router.report(node, report, now) ──> Planner.feed
    Planner's commands ──> per node: this node's (returned) and the others' (``remote``)

The planner (planner/core.py) knows ranks, not machines. The router knows which node each
rank runs on (its HELLO came through that node's supervisor), which nodes are alive (their
heartbeats), and where each published shard lies; from that it

- sends a rank's message to the node the rank is on, and every event to every node;
- starts and stops the job on every node, and tells the planner once: started when the
  first node started, stopped when every live node has stopped, exited when one node's
  launcher failed or every node's exited 0;
- runs each slow job where its files are (Publish on the node whose ranks wrote the shard;
  Prepare, Survey, Seal and FindFallback on every node, their answers merged);
- before a restart, tells each node which published shards it lacks and who serves them;
- declares a node whose heartbeat stopped lost (its ranks crashed, as the planner sees it)
  and sends a node that joins again (a replacement with an empty disk) its part of the
  attempt, with the state it lacks.

Pure like the planner: no socket, no file, the clock an argument (tests/cluster/
test_router.py drives it with scripted reports). head.py owns the channel.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import failures
from ...causes import Cause
from ..classify import Failure
from ..planner import Planner
from ..planner import commands as C
from ..planner import reports as R
from ..state import State

EVERY_NODE = (C.Survey, C.Prepare, C.Seal, C.FindFallback)


@dataclass
class Node:
    node: int
    incarnation: str
    files: tuple[str, int, str] | None      # its file server: host, port, token
    alive: bool = True
    beat: int | None = None
    beat_at: float = 0.0


@dataclass
class _Fanout:
    """One planner Work split over nodes: who still owes an answer, what came back."""
    job: Any
    waiting: set[int]
    results: dict[int, R.WorkDone] = field(default_factory=dict)
    where: dict[int, int] = field(default_factory=dict)     # Publish: shard -> node


@dataclass(frozen=True)
class Located:
    """A published shard: the node that holds it, its directory, its manifest's sha256."""
    node: int
    dir: Path
    sha256: str | None


class Router:
    def __init__(self, planner: Planner, me: int, nnodes: int, *, node_timeout_s: float,
                 join_timeout_s: float):
        self.planner = planner
        self.me = me
        self.nnodes = nnodes
        self.node_timeout_s = node_timeout_s
        self.join_timeout_s = join_timeout_s
        self.nodes: dict[int, Node] = {}
        self.rank_node: dict[int, int] = {}
        self.rank_shard: dict[int, int] = {}
        self.remote: list[tuple[int, Any]] = []      # (node, command) for the channel
        self._local: list[Any] = []
        self._fanouts: dict[int, _Fanout] = {}
        self._located: dict[Path, dict[int, Located]] = {}   # snapshot dir -> its shards
        # A fallback's index of shards, where it lies (a JIT snapshot's is sealed on every node).
        self._indexes: dict[Path, Located] = {}
        self._start: C.StartJob | None = None        # the attempt's start, for late joiners
        self._started: set[int] = set()              # nodes told to start this attempt
        self._start_fed = False
        self._short_since: float | None = None       # fewer than nnodes alive since
        self._stopping: set[int] | None = None
        self._stopped: list[R.JobStopped] = []
        self._exits: dict[int, int] = {}
        self._exit_fed = False
        self.launcher_rc: int | None = None

    # -- nodes ---------------------------------------------------------------------------
    def joined(self, node: int, incarnation: str, files: tuple[str, int, str] | None,
               now: float) -> list[Any]:
        known = self.nodes.get(node)
        if known is not None and known.incarnation == incarnation:
            return self._take()
        if known is not None and known.alive:
            self._lose(node, "it started again (a new supervisor with the same node rank)", now)
        self.nodes[node] = Node(node, incarnation, files, beat_at=now)
        if node != self.me:
            detail = "a replacement" if known is not None else None
            self._emit("node_joined", now, node=node, detail=detail)
        if (self._start is not None and node not in self._started
                and self.planner.state in (State.STARTING, State.RUNNING)):
            # Late for this attempt's start (the others wait for it at the rendezvous). A
            # node that joins during a recovery starts with the next attempt instead.
            self._start_on(node)
        self._check_short(now)
        return self._take()

    def beats(self, beats: dict[int, int], now: float) -> list[Any]:
        """Heartbeat counters as last read: a node whose counter stood still for longer
        than ``node_timeout_s`` is lost."""
        for n in sorted(self.nodes):
            info = self.nodes[n]
            if n == self.me or not info.alive:
                continue
            count = beats.get(n)
            if count is not None and count != info.beat:
                info.beat, info.beat_at = count, now
            elif now - info.beat_at > self.node_timeout_s:
                self._lose(n, f"no heartbeat for {now - info.beat_at:.1f}s "
                              f"(node timeout {self.node_timeout_s}s)", now)
        return self._take()

    def alive(self) -> list[int]:
        return sorted(n for n, i in self.nodes.items() if i.alive)

    def _lose(self, node: int, why: str, now: float) -> None:
        info = self.nodes[node]
        info.alive = False
        self._emit("node_lost", now, node=node, reason=why)
        ranks = sorted(r for r, n in self.rank_node.items() if n == node)
        for r in ranks:
            rank = self.planner.ranks.get(r)
            if rank is not None and rank.connected:
                self._feed(R.Failed(Failure(
                    rank=r, kind=failures.CRASH, ts=now, step=rank.step, phase=rank.phase,
                    extra={"detail": f"node {node} lost: {why}"})), now)
                self._feed(R.Gone(r), now)
        for token, fan in list(self._fanouts.items()):
            if node not in fan.waiting:
                continue
            if isinstance(fan.job, EVERY_NODE):     # its disk no longer matters
                fan.waiting.discard(node)
                if not fan.waiting:
                    del self._fanouts[token]
                    self._feed(self._merge(token, fan), now)
            else:
                self._answer(token, node, R.WorkDone(token, error=f"node {node} lost ({why})"), now)
        if self._stopping is not None and node in self._stopping:
            self._stopping.discard(node)
            self._maybe_stopped(now)
        self._started.discard(node)

    def _check_short(self, now: float) -> None:
        """The join deadline runs from an attempt's start while a node is missing (a
        node lost mid-attempt is the planner's failure first) and ends once all are in."""
        if len(self.alive()) >= self.nnodes:
            self._short_since = None

    # -- reports -------------------------------------------------------------------------
    def report(self, node: int, report: Any, now: float) -> list[Any]:
        info = self.nodes.get(node)
        if info is None or not info.alive:
            return self._take()          # a lost node's last words: it is accounted for
        if isinstance(report, R.Hello):
            self.rank_node[report.rank] = node
            self.rank_shard[report.rank] = report.shard or 0
            report = dataclasses.replace(report, node=node)
        elif isinstance(report, R.Failed) and node != self.me:
            # Stamped on the head's clock: another machine's monotonic clock means nothing here.
            report = R.Failed(dataclasses.replace(report.failure, ts=now))
        if isinstance(report, R.JobStarted):
            if not self._start_fed:
                self._start_fed = True
                self._feed(report, now)
        elif isinstance(report, R.JobExited):
            self._exited(node, report.returncode, now)
        elif isinstance(report, R.JobStopped):
            if self._stopping is not None and node in self._stopping:
                self._stopping.discard(node)
                self._stopped.append(report)
                self._maybe_stopped(now)
        elif isinstance(report, R.WorkDone):
            self._answer(report.token, node, report, now)
        else:
            self._feed(report, now)
        return self._take()

    def tick(self, now: float) -> list[Any]:
        if (self._short_since is not None and self._start is not None
                and now - self._short_since > self.join_timeout_s
                and self.planner.finished is None):
            missing = self.nnodes - len(self.alive())
            self._short_since = None
            self._feed(R.StartFailed(Cause(
                f"{missing} of {self.nnodes} nodes did not join within {self.join_timeout_s}s "
                f"(alive: nodes {self.alive()})")), now)
        self._route(self.planner.tick(now, launcher_rc=self.launcher_rc), now)
        return self._take()

    def begin(self, now: float) -> list[Any]:
        self._route(self.planner.begin(), now)
        return self._take()

    def _exited(self, node: int, rc: int, now: float) -> None:
        self._exits[node] = rc
        if rc != 0 and self.launcher_rc is None:
            self.launcher_rc = rc
        if self._exit_fed:
            return
        if rc != 0 or all(self._exits.get(n) == 0 for n in self.alive()):
            self._exit_fed = True
            self._feed(R.JobExited(rc), now)

    def _maybe_stopped(self, now: float) -> None:
        if self._stopping:
            return
        reports, self._stopping, self._stopped = self._stopped, None, []
        mine = [r for r in reports if r.exit_code is not None]
        self._feed(R.JobStopped(
            max((r.seconds for r in reports), default=0.0),
            mine[0].exit_code if mine else None,
            sum(r.killed for r in reports),
            [s for r in reports for s in r.survivors]), now)

    # -- commands ------------------------------------------------------------------------
    def _feed(self, report: Any, now: float) -> None:
        self._route(self.planner.feed(report, now), now)

    def _route(self, commands: list[Any], now: float) -> None:
        for cmd in commands:
            if isinstance(cmd, C.Send):
                self._to(self.rank_node.get(cmd.rank, self.me), cmd)
            elif isinstance(cmd, (C.Emit, C.Finish, C.Sweep)):
                for n in self.alive():
                    self._to(n, cmd)
            elif isinstance(cmd, C.StartJob):
                self._start_all(cmd, now)
            elif isinstance(cmd, C.StopJob):
                self._stopping = set(self.alive())
                self._stopped = []
                for n in self.alive():
                    self._to(n, cmd)
            elif isinstance(cmd, C.Work):
                self._work(cmd, now)
            else:                       # CheckRunDir: the head's own run dir
                self._local.append(cmd)

    def _to(self, node: int, cmd: Any) -> None:
        if node == self.me:
            self._local.append(cmd)
        else:
            self.remote.append((node, cmd))

    def _start_all(self, cmd: C.StartJob, now: float) -> None:
        self._start, self._started, self._start_fed = cmd, set(), False
        if len(self.alive()) < self.nnodes:
            self._short_since = now
        self._exits, self._exit_fed, self.launcher_rc = {}, False, None
        for n in self.alive():
            self._start_on(n)

    def _start_on(self, node: int) -> None:
        cmd = self._start
        self._started.add(node)
        self._to(node, dataclasses.replace(cmd, fetch=self._fetch_for(node, cmd.resume)))

    def _fetch_for(self, node: int, resume: Path | None) -> tuple[C.Fetch, ...]:
        """The published shards ``node``'s ranks need and its disk lacks."""
        if resume is None:
            return ()
        shards = self._located.get(resume.parent)
        if not shards:
            return ()      # not published by this job's nodes (a manual JITC_RESUME?)
        mine = {self.rank_shard[r] for r, n in self.rank_node.items() if n == node
                and r in self.rank_shard}
        wanted = mine or set(shards)    # a node whose ranks are not known yet: all of them
        out = []
        for s in sorted(wanted):
            where = shards.get(s)
            if where is None or where.node == node:
                continue
            holder = self.nodes.get(where.node)
            if holder is None or holder.files is None:
                continue                 # the start fails on that node, which says why
            host, port, token = holder.files
            out.append(C.Fetch(where.dir, host, port, token, where.sha256))
        index = self._indexes.get(resume.parent)
        holder = self.nodes.get(index.node) if index is not None else None
        if index is not None and index.node != node and holder is not None and holder.files:
            host, port, token = holder.files
            out.append(C.Fetch(resume.parent, host, port, token, index.sha256, index=True))
        return tuple(out)

    def _work(self, cmd: C.Work, now: float) -> None:
        job = cmd.job
        if isinstance(job, C.Publish):
            by_node: dict[int, dict[int, Path]] = {}
            where: dict[int, int] = {}
            for s, d in job.dirs.items():
                n = job.holders.get(s)
                n = self.me if n is None else n
                by_node.setdefault(n, {})[s] = d
                where[s] = n
            fan = _Fanout(job, set(by_node), where=where)
            self._fanouts[cmd.token] = fan
            for n, dirs in sorted(by_node.items()):
                sub = dataclasses.replace(job, dirs=dirs, holders={})
                self._to(n, C.Work(cmd.token, sub))
            for n in list(fan.waiting):
                if n not in self.alive():
                    self._answer(cmd.token, n, R.WorkDone(cmd.token, error=f"node {n} lost"), now)
            return
        targets = self.alive() if isinstance(job, EVERY_NODE) else [self.me]
        self._fanouts[cmd.token] = _Fanout(job, set(targets))
        for n in targets:
            self._to(n, cmd)

    def _answer(self, token: int, node: int, done: R.WorkDone, now: float) -> None:
        fan = self._fanouts.get(token)
        if fan is None or node not in fan.waiting:
            return
        fan.waiting.discard(node)
        fan.results[node] = done
        if fan.waiting:
            return
        del self._fanouts[token]
        self._feed(self._merge(token, fan), now)

    def _merge(self, token: int, fan: _Fanout) -> R.WorkDone:
        results = fan.results
        failed = [d for n, d in sorted(results.items()) if d.error is not None]
        job = fan.job
        if isinstance(job, C.Survey):
            ok = [d.result for d in results.values() if d.error is None and d.result]
            if not ok:
                return failed[0] if failed else R.WorkDone(token, error="no node answered")
            keys = set().union(*ok)
            return R.WorkDone(token, {k: any(r.get(k) for r in ok) for k in keys})
        if failed:
            first = failed[0]
            return R.WorkDone(token, error=first.error, cause=first.cause)
        if isinstance(job, C.Publish):
            manifests: dict[int, Path] = {}
            digests: dict[int, str] = {}
            for d in results.values():
                manifests.update(d.result["manifests"])
                digests.update(d.result.get("digests") or {})
            self._located[job.base] = {
                s: Located(fan.where[s], job.dirs[s], digests.get(s)) for s in manifests}
            return R.WorkDone(token, {"manifests": manifests, "digests": digests})
        if isinstance(job, C.FindFallback):
            found = [(n, d.result) for n, d in sorted(results.items()) if d.result]
            if not found:
                return R.WorkDone(token, None)
            node, best = max(found, key=lambda x: ((x[1].get("step") or -1), x[0] == self.me))
            dirs = best.get("dirs") or {}
            where = Path(best["manifest"]).parent
            self._located[where] = {
                int(s): Located(node, d, (best.get("digests") or {}).get(s))
                for s, d in dirs.items()}
            if best.get("index_sha256"):
                self._indexes[where] = Located(node, where, best["index_sha256"])
            return R.WorkDone(token, best)
        mine = results.get(self.me) or next(iter(results.values()))
        return mine

    def _emit(self, event: str, now: float, **fields: Any) -> None:
        self._route([C.Emit(event, self.planner.attempt, fields, at=now)], now)

    def _take(self) -> list[Any]:
        out, self._local = self._local, []
        return out
