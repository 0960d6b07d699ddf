"""HSDP over two nodes (issues 12 and 15 together): ``examples/fsdp_train.py`` on a (2, 2)
mesh, one replica group per node. A crash on node 1 leaves one shard with its only healthy
copy on node 0; both shards are written there, the job's index is sealed on every node, and
node 1 fetches the two shards it lacks before its ranks resume — bitwise equal to the
fault-free two-node run, each rank from its own shard."""
from __future__ import annotations

import pytest

from tests.fsdp.conftest import SCRIPT, assert_bitwise_equal

from .nodes import ISOLATED, Cluster

pytestmark = pytest.mark.e2e
ARGS = ("--steps", "12", "--dim", "32", "--log-every", "0", "--shards", "2")


def _run(tmp, inject=()):
    c = Cluster(tmp, inject=inject, script=SCRIPT, script_args=ARGS, hang_timeout=6.0)
    c.start()
    codes = c.wait()
    return c, codes


@pytest.mark.parametrize("iso", ["isolated" if ISOLATED else "not-isolated"])
def test_hsdp_across_two_nodes_recovers_each_shard_from_the_node_that_holds_it(tmp_path, iso):
    ref, codes = _run(tmp_path / "ref")
    with ref:
        assert set(codes.values()) == {0}, ref.tail()
        expected = ref.weights()
    c, codes = _run(tmp_path / "run", inject=("crash@rank=3,step=5",))
    with c:
        assert set(codes.values()) == {0}, c.tail()
        assert_bitwise_equal(c.weights(), expected)
        for n in range(2):
            resumed = c.of(n, "resumed")
            assert len(resumed) == 4 and all(e["step"] == 5 and e["replayed"] <= 1
                                             for e in resumed), c.tail()
            # each rank from its own shard (the index JITC_RESUME named leads there)
            assert all(e["manifest"].endswith(f"shard-{e['rank'] % 2}/manifest.json")
                       for e in resumed), resumed
        fetched = c.of(1, "state_fetched")
        assert fetched and fetched[0]["files"] >= 2, c.tail()     # two shards' files
        assert not c.of(0, "state_fetched")                      # node 0 wrote both
