"""Issue 12: several nodes, one decision, no shared filesystem — end to end on CPU/gloo.

Each node is its own ``jitc supervise -- torchrun --nnodes N --node-rank k ...`` with its
own run directory, which the other nodes cannot see (tests/cluster/nodes.py: a mount
namespace per node). Every run must end bitwise equal to the fault-free run of the same
nodes, having *resumed* (not restarted from step 0) with at most one step replayed, and
every node's event log must tell the same story: who failed, on which node. Five of the
scenarios are marked ``slow`` to keep the default suite's time (``pytest -m slow
tests/cluster``); each takes 20-50 s.
"""
from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.e2e.conftest import assert_bitwise_equal

from .nodes import ISOLATED, Cluster

pytestmark = pytest.mark.e2e
ISO = "isolated" if ISOLATED else "not-isolated"
STEPS = 16

_REFERENCE: dict = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    def get(nnodes: int, per_node: int):
        key = (nnodes, per_node)
        if key not in _REFERENCE:
            with Cluster(tmp_path_factory.mktemp("ref"), nnodes=nnodes, per_node=per_node,
                         steps=STEPS) as c:
                c.start()
                codes = c.wait()
                assert set(codes.values()) == {0}, c.tail()
                _REFERENCE[key] = c.weights()
        return _REFERENCE[key]
    return get


def assert_resumed(c: Cluster, node: int) -> None:
    """Every rank resumed (not restarted from step 0), replaying at most one step."""
    resumed = c.of(node, "resumed")
    assert len(resumed) == c.nnodes * c.per_node, (node, c.tail())
    assert all(e["step"] > 0 and e["replayed"] is not None and e["replayed"] <= 1
               for e in resumed), resumed


def assert_recovered(c: Cluster, ref, *, root_cause: set[int], restarts: int = 1) -> None:
    codes = c.wait()
    assert set(codes.values()) == {0}, c.tail()
    assert_bitwise_equal(c.weights(), ref)
    for n in range(c.nnodes):
        events = c.events(n)
        resumed = [e for e in events if e["event"] == "resumed"]
        assert resumed and all(e["step"] > 0 for e in resumed), (n, c.tail())
        assert all(e["replayed"] is not None and e["replayed"] <= 1 for e in resumed), resumed
        assert len([e for e in events if e["event"] == "restart"]) == restarts, c.tail()
        roots = {e["rank"] for e in events if e["event"] == "failure_detected"
                 and e.get("root_cause")}
        assert roots == root_cause, (n, roots)
        for e in events:
            if e["event"] == "failure_detected" and e.get("rank") is not None:
                if c.rdzv == "static":
                    assert e["node"] == e["rank"] // c.per_node, e
                else:               # the rendezvous gives the nodes their ranks
                    assert e["node"] in range(c.nnodes), e


@pytest.mark.parametrize("iso", [ISO])
def test_crash_on_a_member_node_is_recovered_from_the_other_nodes_disk(tmp_path, reference, iso):
    with Cluster(tmp_path, inject=("crash@rank=3,step=6",), steps=STEPS) as c:
        c.start()
        assert_recovered(c, reference(2, 2), root_cause={3})
        fetched = c.of(1, "state_fetched")
        assert fetched and fetched[0]["bytes"] > 0      # node 1 had no stripe of its own


@pytest.mark.slow     # the default suite keeps the others (time)
@pytest.mark.parametrize("iso", [ISO])
def test_hang_on_the_head_node(tmp_path, reference, iso):
    with Cluster(tmp_path, inject=("hang@rank=0,step=6",), steps=STEPS) as c:
        c.start()
        assert_recovered(c, reference(2, 2), root_cause={0})


@pytest.mark.parametrize("iso", [ISO])
def test_exception_in_the_optimizer_phase_on_a_member_with_the_c10d_rendezvous(tmp_path,
                                                                              reference, iso):
    with Cluster(tmp_path, inject=("exception@rank=2,step=7,phase=optimizer",),
                 steps=STEPS, rdzv="c10d") as c:
        c.start()
        assert_recovered(c, reference(2, 2), root_cause={2})


@pytest.mark.slow     # the default suite keeps the others (time)
@pytest.mark.parametrize("iso", [ISO])
def test_two_ranks_on_two_nodes_at_once(tmp_path, reference, iso):
    with Cluster(tmp_path, inject=("crash@rank=1,step=6", "crash@rank=2,step=6"),
                 steps=STEPS) as c:
        c.start()
        codes = c.wait()
        assert set(codes.values()) == {0}, c.tail()
        assert_bitwise_equal(c.weights(), reference(2, 2))
        for n in range(2):
            restarts = c.of(n, "restart")
            assert len(restarts) == 1, c.tail()     # one decision for both failures
            assert_resumed(c, n)


@pytest.mark.slow     # the default suite keeps the others (time)
@pytest.mark.parametrize("iso", [ISO])
def test_a_nodes_torchrun_killed(tmp_path, reference, iso):
    with Cluster(tmp_path, steps=STEPS) as c:
        c.start()
        c.at_step(5)
        c.kill_launcher(1)
        codes = c.wait()
        assert set(codes.values()) == {0}, c.tail()
        assert_bitwise_equal(c.weights(), reference(2, 2))
        for n in range(2):
            assert_resumed(c, n)


@pytest.mark.parametrize("iso", [ISO])
def test_a_whole_node_killed_and_replaced_with_an_empty_disk(tmp_path, reference, iso):
    with Cluster(tmp_path, steps=STEPS, busy=0.2) as c:
        c.start()
        c.at_step(5)
        victims = c.kill_node(1)
        # The machine is gone: a new one, same command, empty run dir.
        import shutil
        shutil.rmtree(c.run_dir(1))
        deadline = time.monotonic() + 30
        while not c.of(0, "node_lost"):
            assert time.monotonic() < deadline, c.tail()
            time.sleep(0.05)
        assert not [p for p in victims if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        c.start(1)
        codes = c.wait()
        assert set(codes.values()) == {0}, c.tail()
        assert_bitwise_equal(c.weights(), reference(2, 2))
        lost = c.of(0, "node_lost")
        assert lost[0]["node"] == 1
        resumed = c.of(0, "resumed")
        assert resumed and all(e["step"] > 0 and e["replayed"] <= 1 for e in resumed), c.tail()
        assert c.of(1, "state_fetched"), c.tail()        # the replacement got it over the wire


@pytest.mark.slow     # the default suite keeps the others (time)
@pytest.mark.parametrize("iso", [ISO])
def test_three_nodes_crash_on_the_last(tmp_path, reference, iso):
    with Cluster(tmp_path, nnodes=3, per_node=1, inject=("crash@rank=2,step=6",),
                 steps=STEPS) as c:
        c.start()
        assert_recovered(c, reference(3, 1), root_cause={2})


@pytest.mark.parametrize("iso", [ISO])
def test_the_head_node_lost_ends_every_node_clearly_with_no_orphan(tmp_path, iso):
    with Cluster(tmp_path, steps=200, busy=0.1) as c:
        c.start()
        c.at_step(3)
        member = psutil.Process(c.procs[1].pid)
        children = member.children(recursive=True)
        c.kill_node(0)
        code = c.procs[1].wait(timeout=60)
        assert code == 1, c.tail()
        text = c.logs[1].read_text()
        assert "the head node is gone" in text, c.tail()
        time.sleep(0.5)
        alive = [p.pid for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive and not c.leftovers(), (alive, c.tail())


@pytest.mark.slow     # the default suite keeps the others (time)
@pytest.mark.parametrize("iso", [ISO])
def test_a_lost_node_that_does_not_come_back_stops_the_job_with_a_clear_message(tmp_path, iso):
    with Cluster(tmp_path, steps=200, busy=0.1, join_timeout=5.0) as c:
        c.start()
        c.at_step(3)
        c.kill_node(1)
        code = c.procs[0].wait(timeout=90)
        assert code == 1, c.tail()
        gave_up = c.of(0, "gave_up")
        assert gave_up and "1 of 2 nodes did not join within 5.0s" in gave_up[-1]["reason"], \
            c.tail()
        assert c.of(0, "node_lost")[0]["node"] == 1
        assert c.of(0, "restart"), c.tail()       # node 0's part was recovered and restarted
        time.sleep(0.5)
        assert not c.leftovers(), c.tail()        # no orphan of the job on any node


@pytest.mark.parametrize("iso", [ISO])
def test_sigterm_to_every_node_stops_the_job_everywhere(tmp_path, iso):
    """What a scheduler's cancel does (scancel, a pod deleted): every supervisor SIGTERMed."""
    with Cluster(tmp_path, steps=200, busy=0.1) as c:
        c.start()
        c.at_step(3)
        for p in c.procs.values():
            p.send_signal(signal.SIGTERM)
        codes = c.wait(timeout=90)
        assert codes == {0: 143, 1: 143}, c.tail()
        time.sleep(0.5)
        assert not c.leftovers(), c.tail()
        for n in range(2):
            assert any("interrupted" in (e.get("reason") or "") for e in c.of(n, "gave_up")), \
                c.tail()
