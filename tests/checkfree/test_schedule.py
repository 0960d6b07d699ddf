import pytest

from jitc.checkfree import EdgeLayout, is_swapped, stage_order
from jitc.checkfree.schedule import neighbours
from jitc.errors import UsageError


@pytest.mark.parametrize("S", [4, 5, 6, 7, 9, 16])
def test_swap_schedule_any_number_of_stages(S):
    orders = [stage_order(S, m, checkfree_plus=True) for m in range(8)]
    swapped = [o for o in orders if o != list(range(S))]
    assert len(swapped) == 4                                  # half of the microbatches
    for o in swapped:
        assert sorted(o) == list(range(S))
        assert o[:2] == [1, 0] and o[-2:] == [S - 1, S - 2]
        assert o[2:-2] == list(range(2, S - 2))
    assert [is_swapped(m) for m in range(4)] == [False, True, False, True]


def test_plain_schedule_is_in_order_and_small_pipelines_refused():
    assert stage_order(3, 1, checkfree_plus=False) == [0, 1, 2]
    with pytest.raises(UsageError):
        stage_order(3, 1, checkfree_plus=True)


@pytest.mark.parametrize("S", [4, 5, 8])
def test_edge_layout(S):
    plus = EdgeLayout(S, True)
    assert plus.embedding_holders == (0, 1) and plus.head_holders == (S - 2, S - 1)
    assert plus.copy_source(0) == 1 and plus.copy_source(S - 1) == S - 2
    assert plus.copy_source(2) is None
    plain = EdgeLayout(S, False)
    assert plain.embedding_holders == (0,) and plain.head_holders == (S - 1,)
    assert plain.copy_source(0) is None
    # In swapped order the stand-ins are at the ends, and they hold the layers they need.
    order = stage_order(S, 1, True)
    assert plus.holds_embedding(order[0]) and plus.holds_head(order[-1])
    assert neighbours(order, 0) == (1, order[2]) and neighbours(order, order[0]) == (None, 0)
