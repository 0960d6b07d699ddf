"""One recovery: the just-in-time snapshot, coordinated across the healthy replicas.
Pure: it is fed reports and returns commands (planner/commands.py); the disk is reached
only through ``Work`` the shell runs off its loop.

    QUERY every connected healthy rank -> STATE (bounded by query_timeout_s); meanwhile
      Survey the disk (CheckFree+ schedule? any earlier snapshot?)
    choose the step and each stage's method (methods.py; invariant I1)
    Prepare the snapshot's directories
    assign stripes: stripe j of k to the j-th usable replica of that shard at that step;
      await SNAPSHOT_DONE per stripe (bounded by snapshot_timeout_s); a writer that
      disconnects or answers ok=false has its stripes reassigned to another writer of the
      same shard and step
    Publish each shard (every stripe verified, manifest by atomic rename)
    Rebuild each stage that lost every replica from its neighbours (CheckFree / CheckFree+)
    Seal (several shards): the job's index naming every shard's manifest, written last
    -> Outcome. Where no JIT point exists: FindFallback (the newest complete snapshot on
       disk, a periodic one or an earlier JIT one), else give up. Nothing is invented: a
       snapshot counts only once published.

The ranks that failed (root causes, untrusted kinds) are never writers: their state is
suspect. Ranks are known by number only: which socket, store or machine a report came
through is the shell's business. A writer's ``error`` (``write <path>: ENOSPC (...)``,
jitc/causes.py) and the shell's own OS errors travel in ``Outcome.reason``/``cause``: the
first one seen, as the root cause of the snapshot's failure.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...causes import Cause, parse
from ...protocol import Msg
from ..server import RankInfo
from . import commands as C
from .methods import StagePlan, plan_stages
from .reports import WorkDone


class Phase(enum.Enum):
    QUERYING = "querying"
    PREPARING = "preparing"
    WRITING = "writing"
    PUBLISHING = "publishing"
    REBUILDING = "rebuilding"
    SEALING = "sealing"
    FALLBACK = "fallback"
    DONE = "done"


@dataclass
class Outcome:
    """How the next attempt starts."""

    protected: bool                 # the ranks had registered state
    manifest: Path | None = None    # resume from this (None with protected=False: scratch)
    step: int | None = None
    gave_up: str | None = None      # reason, when protected state exists and nothing usable
    fallback: bool = False          # manifest is an older snapshot found on disk
    reason: str | None = None       # why this attempt's own snapshot was not used
    cause: Cause | None = None      # the OS error behind ``reason``, where there was one


@dataclass
class _Shard:
    index: int
    dir: Path | None
    writers: list[int]              # usable replicas at the chosen step, stripe j -> writers[j]
    files: list[str] = field(default_factory=list)           # stripe j -> its file stem
    pending: dict[int, int] = field(default_factory=dict)    # stripe -> rank writing it
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)


MAX_REQUERIES = 3      # a writer that moved on past the asked step: query again, this often


def _moved_on(error: Any) -> bool:
    """The agent's refusal of a SNAPSHOT whose step its rank has already passed."""
    return isinstance(error, str) and error.startswith("step mismatch")


@dataclass(frozen=True)
class Limits:
    query_timeout_s: float
    snapshot_timeout_s: float


class SnapshotRun:
    def __init__(self, *, attempt: int, ranks: dict[int, RankInfo], excluded: set[int],
                 protected: bool, limits: Limits, why_excluded: dict[int, str] | None = None,
                 context: Callable[[], str | None] = lambda: None):
        """``why_excluded``: rank -> why it is not a writer (its failure's kind);
        ``context``: what else the job's end says (the launcher's exit), asked when the
        reason is given that no replica is left (the launcher may be reaped after its ranks'
        channels closed)."""
        self.attempt = attempt
        self.ranks = ranks
        self.excluded = excluded
        self.protected = protected
        self.limits = limits
        self.why_excluded = why_excluded or {}
        self.context = context
        self.phase = Phase.QUERYING
        self.outcome: Outcome | None = None
        self.written = False     # every stripe is on disk: the job is not needed any more
        self._out: list[Any] = []
        self._asked: set[int] = set()
        self._answers: dict[int, dict[str, Any]] = {}
        self._survey: dict[str, Any] | None = None
        self._deadline = 0.0
        self._write_t0 = 0.0
        self._step: int | None = None
        self._id = ""
        self._base: Path | None = None
        self._shards: dict[int, _Shard] = {}
        self._num_shards = 1
        self._plan: StagePlan | None = None
        self._world: int | None = None
        self._manifests: dict[int, Path] = {}
        self._rebuild_t0 = 0.0
        self._rebuilding: list[Any] = []
        self._work: dict[int, Phase] = {}       # token -> the phase that waits for it
        self._next_token = 0
        self._cause: Cause | None = None
        self._fallback_reason = ""
        self._requeries = 0

    # -- inputs --------------------------------------------------------------------------
    def start(self, now: float) -> list[Any]:
        for r, info in sorted(self.ranks.items()):
            if info.connected and r not in self.excluded:
                self._query(r)
        self._deadline = now + self.limits.query_timeout_s
        self._spawn(C.Survey(), Phase.QUERYING)
        return self.tick(now)

    def on_hello(self, rank: int, now: float) -> list[Any]:
        """A rank that was still starting when the failure came: ask it too."""
        if self.phase is Phase.QUERYING and rank not in self.excluded:
            self._query(rank)
        return self._take()

    def on_state(self, rank: int, body: dict[str, Any], now: float) -> list[Any]:
        if self.phase is Phase.QUERYING and rank in self._asked:
            self._answers[rank] = body
        return self.tick(now)

    def on_gone(self, rank: int, now: float) -> list[Any]:
        self._asked.discard(rank)
        if self.phase is Phase.WRITING:
            for shard in self._shards.values():
                shard.dead.add(rank)
                for stripe in [j for j, r in shard.pending.items() if r == rank]:
                    self._reassign(shard, stripe, rank)
        return self.tick(now)

    def on_snapshot_done(self, rank: int, body: dict[str, Any], now: float) -> list[Any]:
        if self.phase is not Phase.WRITING or body.get("id") != self._id:
            return self._take()
        shard = self._shards.get(self._shard_of(rank))
        stripe = body.get("stripe")
        if shard is None or shard.pending.get(stripe) != rank:
            return self._take()
        if body.get("ok"):
            del shard.pending[stripe]
            shard.done[stripe] = body
        elif _moved_on(body.get("error")) and self._requeries < MAX_REQUERIES:
            # A healthy rank still training (the launcher died, its ranks did not) finished
            # another step since it answered: its state is fine, the step is stale. Ask again.
            self._requeries += 1
            self._requery(now)
            return self._take()
        else:
            self._note(parse(body.get("error")), rank)
            shard.dead.add(rank)
            error = body.get("error")
            self._reassign(shard, stripe, rank, error if isinstance(error, str) else None)
        return self.tick(now)

    def on_work(self, done: WorkDone, now: float) -> list[Any]:
        phase = self._work.pop(done.token, None)
        if phase is None or self.phase is Phase.DONE:
            return self._take()
        if done.cause is not None:
            self._note(done.cause)
        if phase is Phase.QUERYING:
            self._survey = done.result if done.error is None else {"checkfree_plus": False,
                                                                   "periodic": True}
        elif phase is Phase.PREPARING:
            self._prepared(done, now)
        elif phase is Phase.PUBLISHING:
            self._published(done, now)
        elif phase is Phase.REBUILDING:
            self._rebuilt(done, now)
        elif phase is Phase.SEALING:
            self._sealed(done)
        elif phase is Phase.FALLBACK:
            self._found(done)
        return self.tick(now)

    def tick(self, now: float) -> list[Any]:
        if self.phase is Phase.QUERYING:
            # Done early only when the whole world has said HELLO and every rank asked has
            # answered or gone; otherwise the deadline ends the query. The survey is quick.
            world = max((i.world_size or 0 for i in self.ranks.values()), default=0)
            answered = len(self.ranks) >= world and all(
                r in self._answers or not self.ranks[r].connected for r in self._asked)
            if (answered or now >= self._deadline) and self._survey is not None:
                self._choose(now)
        if self.phase is Phase.WRITING:
            if all(not s.pending for s in self._shards.values()):
                self.written = True
                self._publish()
            elif now >= self._deadline:
                late = sorted({r for s in self._shards.values() for r in s.pending.values()})
                self._fallback(f"snapshot not finished within {self.limits.snapshot_timeout_s}s "
                               f"(waiting for ranks {late})")
        return self._take()

    # -- steps ---------------------------------------------------------------------------
    def _shard_of(self, rank: int) -> int:
        state = self._answers.get(rank) or {}
        shard = state.get("shard", self.ranks[rank].shard)
        return shard if isinstance(shard, int) else 0

    def _choose(self, now: float) -> None:
        # What the ranks hold decides; PROGRESS (``protected`` as given) only where none
        # answered: an active shim reports steps whether or not protect() registered state.
        if self._answers:
            self.protected = any((a.get("nbytes") or 0) > 0 for a in self._answers.values())
        if not self.protected:
            self._finish(Outcome(protected=False))
            return
        usable = {r: a for r, a in self._answers.items()
                  if a.get("usable") and self.ranks[r].connected and isinstance(a.get("completed"), int)}
        self._num_shards = num_shards = max([self.ranks[r].num_shards for r in self.ranks] + [1])
        by_shard: dict[int, dict[int, list[int]]] = {s: {} for s in range(num_shards)}
        for r in sorted(usable):
            by_shard.setdefault(self._shard_of(r), {}).setdefault(usable[r]["completed"], []).append(r)
        replicas: dict[int, int] = {}
        for r in self.ranks:
            replicas[self._shard_of(r)] = replicas.get(self._shard_of(r), 0) + 1
        survey = self._survey or {}
        self._plan = plan = plan_stages(by_shard, replicas, bool(survey.get("checkfree_plus")),
                                        have_periodic=bool(survey.get("periodic", True)),
                                        pipeline=bool(survey.get("pipeline", True)))
        if plan.reason is not None:
            no_survivor = not any(by_shard.values())
            reason = self._no_replica() if no_survivor else plan.reason
            if plan.periodic:
                self._fallback(reason)
            else:
                self._give_up(reason)
            return
        self._step = plan.step
        self._world = max((i.world_size for i in self.ranks.values()
                           if isinstance(i.world_size, int)), default=None)
        writing = [s for s in range(num_shards) if plan.method(s).writes]
        for s in writing:
            self._shards[s] = _Shard(s, None, self._one_node(by_shard[s][self._step]))
        self.phase = Phase.PREPARING
        self._spawn(C.Prepare(self.attempt, self._step, num_shards,
                              {s: len(self._shards[s].writers) for s in writing}),
                    Phase.PREPARING)

    def _one_node(self, writers: list[int]) -> list[int]:
        """The writers of one shard on the node that holds most of them (fewest node
        number on a tie): its stripes then lie on one disk, published there, fetched from
        there by the nodes that lack it (nothing reads another node's disk)."""
        by_node: dict[Any, list[int]] = {}
        for r in writers:
            by_node.setdefault(self.ranks[r].node, []).append(r)
        best = min(by_node, key=lambda n: (-len(by_node[n]), -1 if n is None else n))
        return by_node[best]

    def _prepared(self, done: WorkDone, now: float) -> None:
        if done.error is not None:
            self._fallback(f"cannot create the snapshot directory: {done.error}")
            return
        self._base, self._id = done.result["base"], done.result["id"]
        for s, d in done.result["dirs"].items():
            self._shards[s].dir = d
            self._shards[s].files = list(done.result["files"][s])
        self.phase = Phase.WRITING
        self._write_t0 = now
        self._deadline = now + self.limits.snapshot_timeout_s
        for shard in self._shards.values():
            for j, r in enumerate(shard.writers):
                shard.pending[j] = r
                self._request(shard, r, j, reassigned_from=None)

    def _no_replica(self) -> str:
        """"no usable replica", and why not, rank by rank."""
        why = []
        for r in sorted(self.ranks):
            answer = self._answers.get(r)
            if r in self.excluded:
                why.append(f"rank {r}: {self.why_excluded.get(r, 'failed')}")
            elif not self.ranks[r].connected:
                why.append(f"rank {r}: gone")
            elif answer is None:
                why.append(f"rank {r}: no answer within {self.limits.query_timeout_s}s")
            elif not answer.get("usable"):
                why.append(f"rank {r}: state not usable (nothing registered, or its "
                           "optimizer window stuck open)")
        context = self.context()
        if context:
            why.append(context)
        return "no usable replica" + (f" ({'; '.join(why)})" if why else "")

    def _request(self, shard: _Shard, rank: int, stripe: int, reassigned_from: int | None,
                 error: str | None = None) -> None:
        k = len(shard.writers)
        body = {"id": self._id, "dir": str(shard.dir), "stripes": [stripe],
                "files": [shard.files[stripe]], "nstripes": k, "step": self._step}
        self._out.append(C.Send(rank, Msg.SNAPSHOT, body))
        self._emit("snapshot_requested", rank=rank, step=self._step, stripes=[stripe],
                   nstripes=k, shard=shard.index, snapshot=str(shard.dir),
                   reassigned_from=reassigned_from,
                   reassigned=reassigned_from is not None or None, error=error)

    def _reassign(self, shard: _Shard, stripe: int, from_rank: int,
                  error: str | None = None) -> None:
        """``error``: why ``from_rank`` failed, where it said (SNAPSHOT_DONE)."""
        spare = [r for r in shard.writers if r not in shard.dead and self.ranks[r].connected]
        if not spare:
            self._emit("snapshot_requested", echo=False, rank=None, step=self._step,
                       stripes=[stripe], shard=shard.index, reassigned_from=from_rank,
                       detail="no writer left for this stripe", error=error)
            self._fallback(f"every replica of shard {shard.index} failed during the snapshot")
            return
        load = {r: sum(1 for x in shard.pending.values() if x == r) for r in spare}
        target = min(spare, key=lambda r: (load[r], r))
        shard.pending[stripe] = target
        self._request(shard, target, stripe, reassigned_from=from_rank, error=error)

    def _publish(self) -> None:
        self.phase = Phase.PUBLISHING
        self._spawn(C.Publish(self._base, {s: sh.dir for s, sh in self._shards.items()},
                              self._world,
                              {s: self.ranks[sh.writers[0]].node for s, sh in self._shards.items()}),
                    Phase.PUBLISHING)

    def _published(self, done: WorkDone, now: float) -> None:
        if done.error is not None:
            self._fallback(f"publishing the snapshot failed: {done.error}")
            return
        nbytes = sum(int(d.get("bytes") or 0) for sh in self._shards.values() for d in sh.done.values())
        stripes = sum(len(sh.writers) for sh in self._shards.values())
        self._manifests = dict(done.result["manifests"])
        first = self._manifests.get(0, self._base)
        self._emit("snapshot_done", step=self._step, bytes=nbytes,
                   seconds=round(now - self._write_t0, 6), snapshot=str(first),
                   stripes=stripes)
        if self._num_shards > 1 and (self._survey or {}).get("pipeline", True):
            for a in self._plan.copied:     # pipeline stages (FSDP shards are not "rebuilt")
                self._emit("stage_rebuilt", stage=a.stage, method="replica", neighbours=[],
                           weights=None, step=self._step, detail=a.message)
        self._rebuilding = list(self._plan.rebuilt)
        self._rebuild_next(now)

    def _rebuild_next(self, now: float) -> None:
        if not self._rebuilding:
            if self._num_shards == 1:
                self._finish(Outcome(protected=True, manifest=self._manifests[0], step=self._step))
            else:   # the job's index, last: it exists only once every stage is there
                self.phase = Phase.SEALING
                self._spawn(C.Seal(self._base, dict(self._manifests), self._world), Phase.SEALING)
            return
        self.phase = Phase.REBUILDING
        self._rebuild_t0 = now
        self._spawn(C.Rebuild(self._rebuilding[0], self._base, self._step, self._world),
                    Phase.REBUILDING)

    def _rebuilt(self, done: WorkDone, now: float) -> None:
        a = self._rebuilding.pop(0)
        if done.error is not None:
            self._fallback(f"rebuilding stage {a.stage} failed: {done.error}")
            return
        r = done.result
        self._manifests[a.stage] = r["manifest"]
        self._emit("stage_rebuilt", stage=a.stage, method=self._plan.method(a.stage).name,
                   neighbours=list(a.sources), weights=[round(w, 6) for w in r["weights"]],
                   grad_norms=list(r["norms"]), step=self._step,
                   seconds=round(now - self._rebuild_t0, 6), snapshot=str(r["manifest"]))
        self._rebuild_next(now)

    def _sealed(self, done: WorkDone) -> None:
        if done.error is not None:
            self._fallback(f"publishing the snapshot's index failed: {done.error}")
            return
        self._finish(Outcome(protected=True, manifest=done.result["resume"], step=self._step))

    def _fallback(self, reason: str) -> None:
        if self.phase in (Phase.DONE, Phase.FALLBACK):
            return
        if self._cause is not None and self._cause.text not in reason:
            reason = f"{reason} ({self._cause.text})"
        self._fallback_reason = reason
        self.phase = Phase.FALLBACK
        self._spawn(C.FindFallback(self._num_shards), Phase.FALLBACK)

    def _found(self, done: WorkDone) -> None:
        reason, found = self._fallback_reason, done.result if done.error is None else None
        if found is None:
            self._give_up(f"{reason}; no complete snapshot to fall back to")
            return
        self._finish(Outcome(protected=True, manifest=found["manifest"], fallback=True,
                             step=found["step"], reason=reason, cause=self._cause))

    def _give_up(self, reason: str) -> None:
        self._finish(Outcome(protected=True, gave_up=reason, reason=reason, cause=self._cause))

    def _requery(self, now: float) -> None:
        self._emit("snapshot_requested", echo=False, rank=None, step=self._step,
                   detail=f"a writer finished another step since it answered: asking again "
                          f"({self._requeries} of {MAX_REQUERIES})")
        asked = sorted(self._asked)
        self._asked, self._answers, self._shards = set(), {}, {}
        self._step, self._id, self.phase = None, "", Phase.QUERYING
        for r in asked:
            if self.ranks[r].connected:
                self._query(r)
        self._deadline = now + self.limits.query_timeout_s

    # -- plumbing ------------------------------------------------------------------------
    def _query(self, rank: int) -> None:
        self._asked.add(rank)
        self._out.append(C.Send(rank, Msg.QUERY, {}))

    def _spawn(self, job: Any, waits: Phase) -> None:
        self._next_token += 1
        self._work[self._next_token] = waits
        self._out.append(C.Work(self._next_token, job))

    def _emit(self, event: str, echo: bool = True, **fields: Any) -> None:
        self._out.append(C.Emit(event, self.attempt, fields, echo=echo))

    def _note(self, cause: Cause | None, rank: int | None = None) -> None:
        """Keep the first cause (later ones usually follow from it)."""
        if cause is not None and self._cause is None:
            text = cause.text if rank is None else f"rank {rank}: {cause.text}"
            self._cause = Cause(text, cause.errno, cause.path)

    def _finish(self, outcome: Outcome) -> None:
        self.phase = Phase.DONE
        self.outcome = outcome

    def _take(self) -> list[Any]:
        out, self._out = self._out, []
        return out
