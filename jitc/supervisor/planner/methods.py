"""Recovery methods: how each shard (pipeline stage) of the job gets its state back.

A data-parallel job is a pipeline of one stage. After a failure every stage gets one
method, chosen by ``jitc.checkfree.plan.plan_recovery`` in its order of preference:

  replica     a healthy replica of the stage holds its state: the replicas write it (JIT)
  checkfree   an inner stage lost every replica: merge of its neighbours' fresh snapshots
  checkfree+  an edge stage lost every replica (CheckFree+ schedule): copy its neighbour
  periodic    job-wide: the newest complete snapshot already on disk
  give up     job-wide: nothing to resume from; nothing is invented

What a method needs from the planner is all this module says: ``writes`` (its own
replicas write stripes), ``rebuilds`` (built once the others are published: a
``commands.Rebuild``), the event name of its ``stage_rebuilt`` record. Adding a method is
one ``Action`` in checkfree/plan.py, one entry here, and its work in work.py.

The step (invariant I1: every stage resumes at the same step): healthy ranks hold step i
or i+1; the step chosen is the largest at which *every surviving* stage has a usable
replica. Surviving stages that share no step: no consistent state exists, fall back.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...checkfree.plan import Action, StageAction, StageStatus, plan_recovery


@dataclass(frozen=True)
class Method:
    name: str          # the ``method`` of the stage_rebuilt event
    writes: bool       # the stage's own healthy replicas write its snapshot
    rebuilds: bool     # built by the supervisor after the others are published


METHODS = {
    Action.KEEP: Method("replica", writes=True, rebuilds=False),
    Action.COPY_REPLICA: Method("replica", writes=True, rebuilds=False),
    Action.CHECKFREE_MERGE: Method("checkfree", writes=False, rebuilds=True),
    Action.CHECKFREE_PLUS_COPY: Method("checkfree+", writes=False, rebuilds=True),
}
JOB_WIDE = (Action.PERIODIC, Action.ERROR)


@dataclass(frozen=True)
class StagePlan:
    """What recovery does per stage. ``reason`` set: no JIT resume point; ``periodic``
    says whether the safety net may still provide one (False: stop)."""

    step: int | None
    actions: tuple[StageAction, ...] = ()
    reason: str | None = None
    periodic: bool = True

    def method(self, stage: int) -> Method:
        return METHODS[self.actions[stage].action]

    @property
    def rebuilt(self) -> list[StageAction]:
        return [a for a in self.actions if METHODS[a.action].rebuilds]

    @property
    def copied(self) -> list[StageAction]:
        """Stages that lost a replica and are restored from a surviving one."""
        return [a for a in self.actions if a.action is Action.COPY_REPLICA]


def plan_stages(by_shard: dict[int, dict[int, list[int]]], replicas: dict[int, int],
                checkfree_plus: bool, have_periodic: bool = True,
                pipeline: bool = True) -> StagePlan:
    """Choose the step and each stage's method from the usable replicas per stage and
    step (``by_shard[s][step]`` = ranks). Pure: what the disk says comes as arguments.
    ``pipeline`` False: the shards are FSDP shards (parts of the same layers), which no
    neighbour can stand in for: one that lost every copy goes to the periodic net."""
    surviving = {s: steps for s, steps in by_shard.items() if steps}
    if not surviving:
        return StagePlan(None, reason="no usable replica of any stage")
    common = set.intersection(*(set(steps) for steps in surviving.values()))
    if not common:
        held = ", ".join(f"stage {s} at {sorted(steps)}" for s, steps in sorted(surviving.items()))
        return StagePlan(None, reason=f"the surviving stages hold different steps ({held})")
    step = max(common)
    statuses = [StageStatus(s, max(replicas.get(s, 1), 1), len(by_shard[s].get(step, [])))
                for s in sorted(by_shard)]
    lost = [s.stage for s in statuses if s.lost_all]
    if lost and not pipeline:
        why = (f"shard {lost[0]} lost every copy" if len(lost) == 1
               else f"shards {lost} lost every copy")
        return StagePlan(step, reason=(f"{why}; restoring the whole job from the periodic "
                                       "checkpoint" if have_periodic else
                                       f"cannot recover without a periodic checkpoint: {why}"),
                         periodic=have_periodic)
    actions = tuple(plan_recovery(statuses, checkfree_plus, have_periodic=have_periodic))
    bad = [a for a in actions if a.action in JOB_WIDE]
    if bad:
        return StagePlan(step, actions, reason=bad[0].message,
                         periodic=bad[0].action is Action.PERIODIC)
    return StagePlan(step, actions)
