"""Choosing how to recover each pipeline stage after a failure.

Why this exists: recovery is decided per stage, in a fixed order of preference, and the
decision is a pure function so the supervisor can log it and tests can check it
without processes:

1. COPY_REPLICA: a data-parallel replica of the stage survived: copy it (exact).
2. CHECKFREE_MERGE: an intermediate stage whose two neighbours each have a survivor:
   weighted average of the neighbours (merge.rebuild_stage).
3. CHECKFREE_PLUS_COPY: an edge stage, the run used the CheckFree+ schedule and the
   neighbour survived: copy the neighbour (merge.rebuild_edge_stage).
4. PERIODIC: the whole job falls back to the last periodic checkpoint.
5. ERROR: nothing left to recover from; never resume from invented state.

PERIODIC and ERROR are job-wide: if any stage needs the safety net, every stage is
restored from it (a mix of checkpoint-age stages and current stages would not be a
state the job was ever in), and if any stage cannot be recovered the job stops.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    KEEP = "keep"                        # the stage lost nothing
    COPY_REPLICA = "copy_replica"
    CHECKFREE_MERGE = "checkfree_merge"
    CHECKFREE_PLUS_COPY = "checkfree_plus_copy"
    PERIODIC = "periodic"
    ERROR = "error"


@dataclass(frozen=True)
class StageStatus:
    """What is left of one stage: how many of its replicas exist, and how many survived."""

    stage: int
    replicas: int
    alive: int

    @property
    def lost_some(self) -> bool:
        return self.alive < self.replicas

    @property
    def lost_all(self) -> bool:
        return self.alive == 0


@dataclass(frozen=True)
class StageAction:
    stage: int
    action: Action
    sources: tuple[int, ...] = ()   # stages the state comes from (itself for COPY_REPLICA)
    message: str = ""


def _local_action(s: StageStatus, by_stage: dict[int, StageStatus], num: int,
                  checkfree_plus: bool) -> StageAction:
    if not s.lost_some:
        return StageAction(s.stage, Action.KEEP, (s.stage,))
    if not s.lost_all:
        return StageAction(s.stage, Action.COPY_REPLICA, (s.stage,),
                           f"{s.alive} of {s.replicas} replicas survived")
    prev, nxt = by_stage.get(s.stage - 1), by_stage.get(s.stage + 1)
    if prev is not None and nxt is not None:
        if prev.alive and nxt.alive:
            return StageAction(s.stage, Action.CHECKFREE_MERGE, (prev.stage, nxt.stage),
                               f"merge of stages {prev.stage} and {nxt.stage}")
        return StageAction(s.stage, Action.PERIODIC, (),
                           f"stage {s.stage} and a neighbour lost every replica")
    neighbour = nxt if prev is None else prev
    if checkfree_plus and neighbour is not None and neighbour.alive and num >= 4:
        return StageAction(s.stage, Action.CHECKFREE_PLUS_COPY, (neighbour.stage,),
                           f"edge stage copied from stage {neighbour.stage}")
    why = "the run did not use the CheckFree+ schedule" if not checkfree_plus else \
        "its neighbour lost every replica too"
    return StageAction(s.stage, Action.PERIODIC, (), f"edge stage {s.stage} lost every replica and {why}")


def plan_recovery(stages: list[StageStatus], checkfree_plus: bool,
                  have_periodic: bool) -> list[StageAction]:
    """One action per stage, in stage order. See the module docstring for the rules."""
    by_stage = {s.stage: s for s in stages}
    if sorted(by_stage) != list(range(len(stages))):
        raise ValueError(f"stages must be numbered 0..{len(stages) - 1} once each")
    num = len(stages)
    local = [_local_action(by_stage[i], by_stage, num, checkfree_plus) for i in range(num)]
    needs = [a for a in local if a.action is Action.PERIODIC]
    if not needs:
        return local
    reason = "; ".join(a.message for a in needs)
    if have_periodic:
        return [StageAction(i, Action.PERIODIC, (), f"whole job restored from the periodic checkpoint: {reason}")
                for i in range(num)]
    return [StageAction(i, Action.ERROR, (), f"cannot recover without a periodic checkpoint: {reason}")
            for i in range(num)]
