import pytest

from jitc.checkfree import Action, StageStatus, plan_recovery


def statuses(alive, replicas=1):
    return [StageStatus(s, replicas, a) for s, a in enumerate(alive)]


def actions(plan):
    return [a.action for a in plan]


def test_nothing_lost_keeps_everything():
    assert actions(plan_recovery(statuses([1, 1, 1, 1]), False, False)) == [Action.KEEP] * 4


def test_surviving_replica_is_preferred():
    plan = plan_recovery(statuses([2, 1, 2, 2], replicas=2), False, False)
    assert plan[1].action is Action.COPY_REPLICA and plan[1].sources == (1,)


@pytest.mark.parametrize("S", [4, 6, 9])
def test_intermediate_stage_merged_from_its_neighbours(S):
    for lost in range(1, S - 1):
        alive = [1] * S
        alive[lost] = 0
        plan = plan_recovery(statuses(alive), False, False)
        assert plan[lost].action is Action.CHECKFREE_MERGE
        assert plan[lost].sources == (lost - 1, lost + 1)


def test_edge_stage_copy_only_with_checkfree_plus():
    plan = plan_recovery(statuses([0, 1, 1, 1, 0]), True, False)
    assert plan[0].action is Action.CHECKFREE_PLUS_COPY and plan[0].sources == (1,)
    assert plan[4].action is Action.CHECKFREE_PLUS_COPY and plan[4].sources == (3,)
    fallback = plan_recovery(statuses([0, 1, 1, 1]), False, True)
    assert actions(fallback) == [Action.PERIODIC] * 4
    assert "CheckFree+" in fallback[0].message


def test_adjacent_losses_need_the_safety_net_or_stop():
    assert actions(plan_recovery(statuses([1, 0, 0, 1]), True, True)) == [Action.PERIODIC] * 4
    plan = plan_recovery(statuses([1, 0, 0, 1]), True, False)
    assert actions(plan) == [Action.ERROR] * 4
    assert "periodic checkpoint" in plan[0].message


def test_bad_numbering():
    with pytest.raises(ValueError):
        plan_recovery([StageStatus(1, 1, 1)], False, False)
