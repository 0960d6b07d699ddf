"""The head's router and the job's one planner, driven by scripted reports from two nodes:
no process, no socket, no file. Node 0 (the head) runs ranks 0-1, node 1 ranks 2-3."""
from __future__ import annotations

from pathlib import Path

import pytest

from jitc import failures
from jitc.protocol import Msg
from jitc.supervisor.classify import Failure
from jitc.supervisor.cluster.router import Located, Router
from jitc.supervisor.options import Options
from jitc.supervisor.planner import Planner
from jitc.supervisor.planner import commands as C
from jitc.supervisor.planner import reports as R
from jitc.supervisor.state import ExitCode, State

ROOT = Path("/n0/snapshots")
FILES = {0: ("10.0.0.1", 7000, "aa"), 1: ("10.0.0.2", 7001, "bb")}


class Topo:
    nnodes = 2


def of(cmds, kind):
    return [c for c in cmds if isinstance(c, kind)]


class Job:
    def __init__(self, tmp_path, nodes=2, per_node=2):
        opts = Options(command=("true",), run_dir=tmp_path / "r", lib=Path("/x"))
        self.planner = Planner(opts)
        self.router = Router(self.planner, 0, nodes, node_timeout_s=5.0, join_timeout_s=30.0)
        self.now = 0.0
        self.per_node = per_node
        self.world = nodes * per_node
        self.local: list = []
        self.router.joined(0, "inc0", FILES[0], self.now)
        self.local += self.router.begin(self.now)
        for n in range(1, nodes):
            self.local += self.router.joined(n, f"inc{n}", FILES.get(n, ("h", 1, "cc")), self.now)

    def remote(self, node=None):
        out = [(n, c) for n, c in self.router.remote if node is None or n == node]
        self.router.remote = [(n, c) for n, c in self.router.remote if not (node is None or n == node)]
        return [c for _, c in out] if node is not None else out

    def report(self, node, report, dt=0.0):
        self.now += dt
        out = self.router.report(node, report, self.now)
        self.local += out
        return out

    def tick(self, dt=0.0):
        self.now += dt
        out = self.router.tick(self.now)
        self.local += out
        return out

    def take_local(self):
        out, self.local = self.local, []
        return out

    def start(self):
        for n in range(self.world // self.per_node):
            self.report(n, R.JobStarted(pid=100 + n))
        for r in range(self.world):
            n = r // self.per_node
            self.report(n, R.Hello(r, pid=1000 + r, world_size=self.world))
            self.report(n, R.Progress(r, step=5, completed=4, phase="backward", step_time=0.1,
                                      hang_timeout=30.0))

    def node_of(self, rank):
        return rank // self.per_node


def test_every_node_starts_and_a_rank_is_reached_on_its_node(tmp_path):
    j = Job(tmp_path)
    assert of(j.take_local(), C.StartJob) == [C.StartJob(0, None)]
    assert of(j.remote(1), C.StartJob) == [C.StartJob(0, None)]
    j.start()
    assert j.planner.state is State.RUNNING
    assert {r: i.node for r, i in j.planner.ranks.items()} == {0: 0, 1: 0, 2: 1, 3: 1}


def _crash_rank3_and_query(j):
    j.start()
    j.take_local(), j.remote()
    j.report(1, R.Gone(3))
    j.tick(0.5)
    local = j.take_local()
    queries_local = [c.rank for c in of(local, C.Send) if c.type is Msg.QUERY]
    rem = j.remote(1)
    queries_remote = [c.rank for c in of(rem, C.Send) if c.type is Msg.QUERY]
    assert queries_local == [0, 1] and queries_remote == [2]
    survey = [w for w in of(rem, C.Work) if isinstance(w.job, C.Survey)]
    return local, survey[0].token


def _answer_work(j, node, cmds, results):
    for w in of(cmds, C.Work):
        name = type(w.job).__name__
        j.report(node, R.WorkDone(w.token, results[name](w.job) if callable(results[name])
                                  else results[name]))


RESULTS = {
    "Survey": {"checkfree_plus": False, "pipeline": False, "periodic": False},
    "Prepare": lambda job: {"base": ROOT / "snap-a0-s4", "id": "a0-s4",
                            "dirs": {0: ROOT / "snap-a0-s4"},
                            "files": {0: [f"stripe-{i}-of-{job.nstripes[0]}"
                                          for i in range(job.nstripes[0])]}},
    "Publish": lambda job: {"manifests": {s: d / "manifest.json" for s, d in job.dirs.items()},
                            "digests": {s: "ab" * 32 for s in job.dirs}},
}


def test_a_crash_on_the_member_is_recovered_by_the_heads_planner_from_one_node(tmp_path):
    j = Job(tmp_path)
    local, token = _crash_rank3_and_query(j)
    # Survey runs on both nodes; the planner hears once both answered.
    _answer_work(j, 0, local, RESULTS)
    j.report(1, R.WorkDone(token, {"checkfree_plus": False, "pipeline": False, "periodic": True}))
    for r in (0, 1, 2):
        j.report(j.node_of(r), R.StateAnswer(r, {"completed": 4, "usable": True, "nbytes": 10,
                                                 "shard": 0}))
    j.tick()
    # Prepare on both nodes (same layout under each root)
    local, rem = j.take_local(), j.remote(1)
    assert of(local, C.Work) and of(rem, C.Work)
    _answer_work(j, 0, local, RESULTS)
    _answer_work(j, 1, rem, RESULTS)
    # The writers are the two replicas on node 0 (the most on one node): nothing on node 1.
    local, rem = j.take_local(), j.remote(1)
    snaps = [c for c in of(local, C.Send) if c.type is Msg.SNAPSHOT]
    assert sorted(c.rank for c in snaps) == [0, 1]
    assert not [c for c in of(rem, C.Send) if c.type is Msg.SNAPSHOT]
    for c in snaps:
        j.report(0, R.SnapshotDone(c.rank, {"id": "a0-s4", "stripe": c.body["stripes"][0],
                                            "ok": True, "bytes": 5}))
    # Every stripe written: the job is stopped on both nodes, the shard published on node 0.
    local, rem = j.take_local(), j.remote(1)
    assert of(local, C.StopJob) and of(rem, C.StopJob)
    pub = [w for w in of(local, C.Work) if isinstance(w.job, C.Publish)]
    assert pub and not [w for w in of(rem, C.Work) if isinstance(w.job, C.Publish)]
    _answer_work(j, 0, pub, RESULTS)
    j.report(0, R.JobStopped(0.2, -15, 0, []))
    assert j.planner.state is State.RECOVERING or j.planner.state is State.STOPPING
    assert not of(j.take_local(), C.StartJob)          # node 1 has not stopped yet
    j.report(1, R.JobStopped(0.3, -15, 0, []))
    j.report(0, R.RunDirChecked(None))       # the shell's answer to CheckRunDir
    local, rem = j.take_local(), j.remote(1)
    start0, = of(local, C.StartJob)
    start1, = of(rem, C.StartJob)
    assert start0.attempt == start1.attempt == 1 and start0.resume == ROOT / "snap-a0-s4" / "manifest.json"
    assert start0.fetch == ()
    assert start1.fetch == (C.Fetch(ROOT / "snap-a0-s4", "10.0.0.1", 7000, "aa", "ab" * 32),)


def test_a_silent_node_is_lost_its_ranks_crashed_and_the_job_waits_for_it(tmp_path):
    j = Job(tmp_path)
    j.start()
    j.router.beats({1: 1}, 0.0)
    j.router.beats({1: 2}, 1.0)
    assert j.planner.state is State.RUNNING
    out = j.router.beats({1: 2}, 6.5)
    emits = [c for c in of(out, C.Emit) if c.event == "node_lost"]
    assert emits and emits[0].fields["node"] == 1
    assert j.planner.ranks[2].failed and not j.planner.ranks[3].connected
    assert j.planner.state is State.SETTLING
    # The node's last words (sent before it went) change nothing.
    j.report(1, R.Progress(2, step=6, completed=5, phase="forward"))
    assert j.planner.ranks[2].step == 5


def test_a_node_that_does_not_join_ends_the_job_with_a_clear_message(tmp_path):
    opts = Options(command=("true",), run_dir=tmp_path / "r", lib=Path("/x"))
    planner = Planner(opts)
    router = Router(planner, 0, 2, node_timeout_s=5.0, join_timeout_s=10.0)
    router.joined(0, "i0", FILES[0], 0.0)
    router.begin(0.0)
    router.report(0, R.JobStarted(pid=1), 0.5)
    assert planner.finished is None
    out = router.tick(11.0)
    fin = of(out, C.Finish)
    assert fin and fin[0].code == ExitCode.JOB_FAILED
    assert "1 of 2 nodes did not join within 10.0s" in fin[0].message


def test_a_replacement_node_joining_late_gets_the_attempt_and_the_state_it_lacks(tmp_path):
    j = Job(tmp_path)
    j.start()
    j.take_local(), j.remote()
    # node 1 vanishes (whole machine), is declared lost, the job recovers on node 0
    j.router.beats({1: 1}, 0.0)
    j.router._located[ROOT / "snap-a0-s4"] = {0: Located(0, ROOT / "snap-a0-s4", "cd" * 32)}
    j.router.beats({1: 1}, 6.0)
    assert not j.router.nodes[1].alive
    # The planner restarted (its state and the StartJob it issues, set here directly)
    j.planner.state = State.STARTING
    j.router._route([C.StartJob(1, ROOT / "snap-a0-s4" / "manifest.json")], 7.0)
    assert [n for n, _ in j.router.remote] == []          # node 1 is not there
    j.router.joined(1, "inc1-new", ("10.0.0.9", 7009, "ee"), 8.0)
    (n, start), = [(n, c) for n, c in j.router.remote if isinstance(c, C.StartJob)]
    assert n == 1 and start.attempt == 1
    assert start.fetch == (C.Fetch(ROOT / "snap-a0-s4", "10.0.0.1", 7000, "aa", "cd" * 32),)


def test_a_failure_from_a_member_is_stamped_on_the_heads_clock(tmp_path):
    j = Job(tmp_path)
    j.start()
    j.now = 50.0
    j.report(1, R.Failed(Failure(rank=2, kind=failures.EXCEPTION, ts=123456.0, step=5)))
    assert j.planner.failures[0].ts == 50.0


def test_publish_runs_where_the_shard_was_written(tmp_path):
    j = Job(tmp_path)
    cmd = C.Work(7, C.Publish(ROOT / "s", {0: ROOT / "s" / "shard-0", 1: ROOT / "s" / "shard-1"},
                              4, holders={0: 1, 1: None}))
    j.router._route([cmd], 0.0)
    local, rem = j.router._take(), j.remote(1)
    assert of(local, C.Work)[0].job.dirs == {1: ROOT / "s" / "shard-1"}
    assert of(rem, C.Work)[0].job.dirs == {0: ROOT / "s" / "shard-0"}
    j.router.report(0, R.WorkDone(7, {"manifests": {1: ROOT / "s/shard-1/m"}, "digests": {1: "x"}}), 1.0)
    assert 7 in j.router._fanouts
    j.router.report(1, R.WorkDone(7, {"manifests": {0: ROOT / "s/shard-0/m"}, "digests": {0: "y"}}), 1.0)
    assert 7 not in j.router._fanouts
    located = j.router._located[ROOT / "s"]
    assert located[0].node == 1 and located[1].node == 0 and located[0].sha256 == "y"


def test_a_fallback_found_on_one_node_is_fetched_by_the_others_index_last(tmp_path):
    j = Job(tmp_path)
    j.start()
    cmd = C.Work(9, C.FindFallback(2))
    j.router._route([cmd], 0.0)
    j.router._take(), j.remote()
    stages = ROOT / "snap-p-s8-stages"
    j.router.report(0, R.WorkDone(9, None), 1.0)          # node 0 has nothing
    j.router.report(1, R.WorkDone(9, {
        "manifest": stages / "snapshot.json", "step": 8,
        "dirs": {0: stages / "shard-0", 1: stages / "shard-1"},
        "digests": {0: "d0", 1: "d1"}, "index_sha256": "ix"}), 1.0)
    j.router._route([C.StartJob(1, stages / "snapshot.json")], 2.0)
    (start0,) = of(j.router._take(), C.StartJob)
    # node 0's ranks hold shard 0 (their HELLO said): that shard, then the index
    assert start0.fetch == (C.Fetch(stages / "shard-0", *FILES[1], "d0"),
                            C.Fetch(stages, *FILES[1], "ix", index=True))
    (start1,) = of(j.remote(1), C.StartJob)
    assert start1.fetch == ()


def test_a_node_lost_while_every_node_prepares_does_not_fail_the_snapshot(tmp_path):
    j = Job(tmp_path)
    j.start()
    j.router.beats({1: 1}, 0.0)
    j.router._route([C.Work(5, C.Prepare(0, 4, 1, {0: 2}))], 0.0)
    j.router._take(), j.remote()
    j.router.report(0, R.WorkDone(5, {"base": ROOT / "b", "id": "b", "dirs": {}, "files": {}}), 1.0)
    assert 5 in j.router._fanouts                 # node 1 still owes its answer
    j.router.beats({1: 1}, 7.0)                   # ... and is lost
    assert 5 not in j.router._fanouts


def test_a_replacement_that_joins_during_a_recovery_waits_for_the_next_attempt(tmp_path):
    j = Job(tmp_path)
    j.start()
    j.take_local(), j.remote()
    j.router.beats({1: 1}, 0.0)
    j.router.beats({1: 1}, 6.0)                    # node 1 lost: its ranks crashed
    assert j.planner.state is not State.RUNNING
    j.router.joined(1, "inc1-new", ("10.0.0.9", 7009, "ee"), 6.5)
    assert not of(j.remote(1), C.StartJob)         # not the attempt being recovered


def test_the_stops_of_every_node_become_one_for_the_planner(tmp_path):
    j = Job(tmp_path)
    j.start()
    j.router._route([C.StopJob(None, None)], 1.0)
    j.router._take(), j.remote()
    j.router.report(0, R.JobStopped(0.5, -15, 1, [7]), 1.2)
    assert j.router._stopping == {1}
    j.router.report(1, R.JobStopped(0.0, None, 0, []), 1.3)    # a node whose job was down
    assert j.router._stopping is None
