"""The just-in-time snapshot, coordinated across the healthy replicas.

    QUERY every connected healthy rank -> STATE (bounded by query_timeout_s)
    choose the step: the largest ``completed`` at which every shard has a usable replica
    (rule I1: healthy replicas hold step i or i+1; the newest complete one wins)
    assign stripes: stripe j of k to the j-th usable replica of that shard at that step
    await SNAPSHOT_DONE per stripe (bounded by snapshot_timeout_s); a writer that
    disconnects or answers ok=false has its stripes reassigned to another writer of the
    same shard and step
    publish the manifest (jitc.snapshot.publish: atomic rename)

No usable replica of some shard. Several shards (pipeline stages): stages.py plans per
stage; the stages that have a replica are snapshotted as above and a lost one is rebuilt
from its neighbours' fresh snapshots (CheckFree / CheckFree+) and published beside them;
where that is impossible, the newest snapshot every stage has (stages.latest_complete_
stages), else give up. One shard: the newest complete snapshot already on disk
(``jitc.snapshot.latest_complete``: a periodic one or an earlier JIT one), else give up.
Nothing is ever invented: a snapshot counts only once published.

Layout: one shard (DDP) is exactly docs/internals.md: ``<root>/snap-<id>/stripe-j-of-k.*``
and ``manifest.json``. Several shards: ``<root>/snap-<id>/shard-<s>/`` each a complete
single-shard snapshot with its own manifest; ``JITC_RESUME`` names shard 0's manifest and a
rank of shard s reads ``../shard-<s>/manifest.json`` beside it.

The ranks that failed (root causes) are never writers: their state is suspect.

Causes: a writer's SNAPSHOT_DONE ``error`` (``write <path>: ENOSPC (...)``, jitc/causes.py)
and an OS error of the supervisor's own (creating the snapshot's directory, publishing)
travel in ``Outcome.reason``/``cause`` to the terminal line and the event log: the first one
seen, as the root cause of the snapshot's failure.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import private
from ..causes import Cause, from_oserror, parse
from ..errors import JitcError
from ..protocol import Msg
from ..snapshot.layout import stripe_stem
from .events import EventLog
from .server import RankInfo
from .stages import METHOD, StagePlan, latest_complete_stages, plan_stages, rebuild_stage


class Phase(enum.Enum):
    QUERYING = "querying"
    WRITING = "writing"
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
    dir: Path
    writers: list[int]              # usable replicas at the chosen step, stripe j -> writers[j]
    pending: dict[int, int] = field(default_factory=dict)    # stripe -> rank writing it
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)


class Recovery:
    def __init__(self, *, root: Path, attempt: int, ranks: dict[int, RankInfo],
                 excluded: set[int], protected: bool, events: EventLog,
                 send: Callable[[int, Msg, dict[str, Any]], bool],
                 query_timeout_s: float, snapshot_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 why_excluded: dict[int, str] | None = None, context: str | None = None):
        """``why_excluded``: rank -> why it is not a writer (its failure's kind);
        ``context``: what else the job's end says (the launcher's exit), for the reason
        given when no replica is left."""
        self.root = root
        self.why_excluded = why_excluded or {}
        self.context = context
        self.attempt = attempt
        self.ranks = ranks
        self.excluded = excluded
        self.protected = protected
        self.events = events
        self.send = send
        self.query_timeout_s = query_timeout_s
        self.snapshot_timeout_s = snapshot_timeout_s
        self.clock = clock
        self.phase = Phase.QUERYING
        self.outcome: Outcome | None = None
        self._asked: set[int] = set()
        self._answers: dict[int, dict[str, Any]] = {}
        self._deadline = 0.0
        self._write_t0 = 0.0
        self._step: int | None = None
        self._id = ""
        self._shards: dict[int, _Shard] = {}
        self._base: Path | None = None
        self._num_shards = 1
        self._stage_plan: StagePlan | None = None
        self._cause: Cause | None = None     # first writer error or OS error seen

    # -- inputs --------------------------------------------------------------------------
    def start(self, now: float) -> None:
        for r, info in self.ranks.items():
            if info.connected and r not in self.excluded and self.send(r, Msg.QUERY, {}):
                self._asked.add(r)
        self._deadline = now + self.query_timeout_s
        self.tick(now)

    def on_hello(self, rank: int, now: float) -> None:
        """A rank that was still starting when the failure came: ask it too."""
        if (self.phase is Phase.QUERYING and rank not in self.excluded
                and self.send(rank, Msg.QUERY, {})):
            self._asked.add(rank)

    def on_state(self, rank: int, body: dict[str, Any], now: float) -> None:
        if self.phase is Phase.QUERYING and rank in self._asked:
            self._answers[rank] = body
            self.tick(now)

    def on_disconnect(self, rank: int, now: float) -> None:
        self._asked.discard(rank)
        if self.phase is Phase.WRITING:
            for shard in self._shards.values():
                shard.dead.add(rank)
                for stripe in [j for j, r in shard.pending.items() if r == rank]:
                    self._reassign(shard, stripe, rank, now)
        self.tick(now)

    def on_snapshot_done(self, rank: int, body: dict[str, Any], now: float) -> None:
        if self.phase is not Phase.WRITING or body.get("id") != self._id:
            return
        shard = self._shards.get(self._shard_of(rank))
        stripe = body.get("stripe")
        if shard is None or shard.pending.get(stripe) != rank:
            return
        if body.get("ok"):
            del shard.pending[stripe]
            shard.done[stripe] = body
        else:
            self._note(parse(body.get("error")), rank)
            shard.dead.add(rank)
            error = body.get("error")
            self._reassign(shard, stripe, rank, now, error if isinstance(error, str) else None)
        self.tick(now)

    def tick(self, now: float) -> Outcome | None:
        if self.phase is Phase.QUERYING:
            # Done early only when the whole world has said HELLO and every rank asked has
            # answered or gone; otherwise the deadline ends the query.
            world = max((i.world_size or 0 for i in self.ranks.values()), default=0)
            answered = len(self.ranks) >= world and all(
                r in self._answers or not self.ranks[r].connected for r in self._asked)
            if answered or now >= self._deadline:
                self._plan(now)
        if self.phase is Phase.WRITING:
            if all(not s.pending for s in self._shards.values()):
                self._publish(now)
            elif now >= self._deadline:
                late = sorted({r for s in self._shards.values() for r in s.pending.values()})
                self._fallback(f"snapshot not finished within {self.snapshot_timeout_s}s "
                               f"(waiting for ranks {late})")
        return self.outcome

    # -- steps ---------------------------------------------------------------------------
    def _shard_of(self, rank: int) -> int:
        state = self._answers.get(rank) or {}
        shard = state.get("shard", self.ranks[rank].shard)
        return shard if isinstance(shard, int) else 0

    def _plan(self, now: float) -> None:
        if any((a.get("nbytes") or 0) > 0 for a in self._answers.values()):
            self.protected = True
        if not self.protected:
            self._finish(Outcome(protected=False))
            return
        usable = {r: a for r, a in self._answers.items()
                  if a.get("usable") and self.ranks[r].connected and isinstance(a.get("completed"), int)}
        num_shards = max([self.ranks[r].num_shards for r in self.ranks] + [1])
        self._num_shards = num_shards
        by_shard: dict[int, dict[int, list[int]]] = {s: {} for s in range(num_shards)}
        for r in sorted(usable):
            by_shard.setdefault(self._shard_of(r), {}).setdefault(usable[r]["completed"], []).append(r)
        if num_shards > 1:
            replicas: dict[int, int] = {}
            for r in self.ranks:
                replicas[self._shard_of(r)] = replicas.get(self._shard_of(r), 0) + 1
            self._stage_plan = plan = plan_stages(by_shard, replicas, self.root)
            if plan.reason is not None:
                self._fallback(plan.reason)
                return
            self._step = plan.step
            lost = {a.stage for a in plan.rebuilt}
            by_shard = {s: steps for s, steps in by_shard.items() if s not in lost}
        else:
            common = set.intersection(*(set(steps) for steps in by_shard.values()))
            if not common:
                missing = [s for s, steps in by_shard.items() if not steps]
                self._fallback(self._no_replica() if missing
                               else "the shards' replicas hold different steps")
                return
            self._step = max(common)
        self._id = self._new_id(self._step)
        base = self._base = self.root / f"snap-{self._id}"
        for s, steps in by_shard.items():
            d = base if num_shards == 1 else base / f"shard-{s}"
            try:
                if not self.root.is_dir():   # a vanished run dir is not created again
                    self.root.mkdir(mode=0o700)
                private.make_dirs(d)
            except OSError as e:
                self._note(from_oserror("mkdir", e))
                self._fallback(f"cannot create the snapshot directory: {self._cause.text}")
                return
            self._shards[s] = _Shard(s, d, steps[self._step])
        self.phase = Phase.WRITING
        self._write_t0 = self.clock()
        self._deadline = now + self.snapshot_timeout_s
        for shard in self._shards.values():
            for j, r in enumerate(shard.writers):
                shard.pending[j] = r
                self._request(shard, r, j, now, reassigned_from=None)

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
                why.append(f"rank {r}: no answer within {self.query_timeout_s}s")
            elif not answer.get("usable"):
                why.append(f"rank {r}: state not usable (nothing registered, or its "
                           "optimizer window stuck open)")
        if self.context:
            why.append(self.context)
        return "no usable replica" + (f" ({'; '.join(why)})" if why else "")

    def _request(self, shard: _Shard, rank: int, stripe: int, now: float,
                 reassigned_from: int | None, error: str | None = None) -> None:
        body = {"id": self._id, "dir": str(shard.dir), "stripes": [stripe],
                "files": [stripe_stem(stripe, len(shard.writers))],
                "nstripes": len(shard.writers), "step": self._step}
        self.send(rank, Msg.SNAPSHOT, body)
        self.events.emit("snapshot_requested", self.attempt, rank=rank, step=self._step,
                         stripes=[stripe], nstripes=len(shard.writers), shard=shard.index,
                         snapshot=str(shard.dir), reassigned_from=reassigned_from,
                         reassigned=reassigned_from is not None or None, error=error)

    def _reassign(self, shard: _Shard, stripe: int, from_rank: int, now: float,
                  error: str | None = None) -> None:
        """``error``: why ``from_rank`` failed, where it said (SNAPSHOT_DONE)."""
        spare = [r for r in shard.writers if r not in shard.dead and self.ranks[r].connected]
        if not spare:
            self.events.emit("snapshot_requested", self.attempt, rank=None, step=self._step,
                             stripes=[stripe], shard=shard.index, reassigned_from=from_rank,
                             detail="no writer left for this stripe", error=error, echo=False)
            self._fallback(f"every replica of shard {shard.index} failed during the snapshot")
            return
        load = {r: sum(1 for x in shard.pending.values() if x == r) for r in spare}
        target = min(spare, key=lambda r: (load[r], r))
        shard.pending[stripe] = target
        self._request(shard, target, stripe, now, reassigned_from=from_rank, error=error)

    def _publish(self, now: float) -> None:
        try:
            from ..snapshot import publish
            world = max((i.world_size for i in self.ranks.values()
                         if isinstance(i.world_size, int)), default=None)
            manifests = {s: publish(sh.dir, world_size=world) for s, sh in self._shards.items()}
        except OSError as e:
            self._note(from_oserror("publish", e))
            self._fallback(f"publishing the snapshot failed: {self._cause.text}")
            return
        except (JitcError, ImportError) as e:
            self._fallback(f"publishing the snapshot failed: {e}")
            return
        nbytes = sum(int(d.get("bytes") or 0) for sh in self._shards.values() for d in sh.done.values())
        stripes = sum(len(sh.writers) for sh in self._shards.values())
        first = manifests.get(0) or self._base / "shard-0" / "manifest.json"
        self.events.emit("snapshot_done", self.attempt, step=self._step, bytes=nbytes,
                         seconds=round(self.clock() - self._write_t0, 6), snapshot=str(first),
                         stripes=stripes)
        if self._stage_plan is not None and not self._rebuild_stages(world):
            return
        self._finish(Outcome(protected=True, manifest=Path(first), step=self._step))

    def _rebuild_stages(self, world: int | None) -> bool:
        """Rebuild each lost stage from its neighbours' just-published snapshots; report
        the stages restored from a surviving replica. False: fell back instead."""
        plan = self._stage_plan
        for a in plan.actions:
            if METHOD.get(a.action.value) == "replica":
                self.events.emit("stage_rebuilt", self.attempt, stage=a.stage, method="replica",
                                 neighbours=[], weights=None, step=self._step,
                                 detail=a.message)
        for a in plan.rebuilt:
            t0 = self.clock()
            try:
                manifest, result = rebuild_stage(a, self._base, self.root, self._step, world)
            except (JitcError, OSError) as e:
                self._fallback(f"rebuilding stage {a.stage} failed: {e}")
                return False
            self.events.emit("stage_rebuilt", self.attempt, stage=a.stage,
                             method=METHOD[a.action.value], neighbours=list(a.sources),
                             weights=[round(w, 6) for w in result.weights],
                             grad_norms=list(result.norms), step=self._step,
                             seconds=round(self.clock() - t0, 6), snapshot=str(manifest))
        return True

    def _fallback(self, reason: str) -> None:
        if self.phase is Phase.DONE:
            return
        if self._cause is not None and self._cause.text not in reason:
            reason = f"{reason} ({self._cause.text})"
        found = None
        try:
            from ..snapshot import latest_complete
            if not self.root.is_dir():
                found = None
            elif self._num_shards > 1:
                found = latest_complete_stages(self.root, self._num_shards)
            else:
                found = latest_complete(self.root)
        except (JitcError, OSError, ImportError):
            found = None
        if found is None:
            self._finish(Outcome(protected=True, gave_up=f"{reason}; no complete snapshot to "
                                                        "fall back to",
                                 reason=reason, cause=self._cause))
            return
        manifest = Path(found)
        if manifest.is_dir():
            manifest = manifest / "manifest.json"
        self._finish(Outcome(protected=True, manifest=manifest, fallback=True,
                             step=_manifest_step(manifest), reason=reason, cause=self._cause))

    def _note(self, cause: Cause | None, rank: int | None = None) -> None:
        """Keep the first cause (later ones usually follow from it)."""
        if cause is not None and self._cause is None:
            text = cause.text if rank is None else f"rank {rank}: {cause.text}"
            self._cause = Cause(text, cause.errno, cause.path)

    def _finish(self, outcome: Outcome) -> None:
        self.phase = Phase.DONE
        self.outcome = outcome

    def _new_id(self, step: int) -> str:
        n = 0
        while (self.root / f"snap-a{self.attempt}-s{step}-{n}").exists():
            n += 1
        return f"a{self.attempt}-s{step}-{n}"


def _manifest_step(manifest: Path) -> int | None:
    import json
    try:
        step = json.loads(manifest.read_text()).get("step")
    except (OSError, ValueError):
        return None
    return step if isinstance(step, int) else None
