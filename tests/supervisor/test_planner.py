"""The recovery planner driven by scripted reports: no process, no socket, no file.

Each test feeds reports (jitc/supervisor/planner/reports.py) with the clock as an argument
and checks the commands that come back, answering ``Work`` as the shell's worker would.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from jitc import failures
from jitc.causes import Cause
from jitc.checkfree.plan import Action
from jitc.failures import Severity
from jitc.protocol import Msg
from jitc.supervisor.classify import Failure
from jitc.supervisor.options import Options
from jitc.supervisor.planner import Planner
from jitc.supervisor.planner import commands as C
from jitc.supervisor.planner import reports as R
from jitc.supervisor.state import ExitCode, State

ROOT = Path("/run/snapshots")


def of(cmds, kind):
    return [c for c in cmds if isinstance(c, kind)]


def events(cmds, name=None):
    return [c for c in cmds if isinstance(c, C.Emit) and (name is None or c.event == name)]


class Job:
    """A planner and a scripted job of ``world`` ranks in ``shards`` shards."""

    def __init__(self, tmp_path, world=3, shards=1, max_restarts=3, **opts):
        self.p = Planner(Options(command=("true",), run_dir=tmp_path / "r", lib=Path("/x"),
                                 max_restarts=max_restarts, **opts))
        self.world, self.shards, self.now = world, shards, 0.0
        self.log: list = []
        assert self.p.begin() == [C.StartJob(0, None)]
        self.feed(R.JobStarted(pid=100))
        for r in range(world):      # shard = rank % shards, as protect() lays them out
            self.feed(R.Hello(r, pid=1000 + r, shard=r % shards, num_shards=shards,
                              world_size=world, node=r % 2))
        for r in range(world):
            self.feed(R.Progress(r, step=5, completed=4, phase="backward", step_time=0.1,
                                 hang_timeout=30.0))

    def feed(self, report, dt=0.0):
        """The planner's commands; a StopJob is carried out at once, as the shell does."""
        self.now += dt
        out = self.p.feed(report, self.now)
        self.log += out
        if of(out, C.StopJob):
            out = out + self.feed(R.JobStopped(0.1, 1, 0, []))
        return out

    def tick(self, dt=0.0, rc=None):
        self.now += dt
        out = self.p.tick(self.now, launcher_rc=rc)
        self.log += out
        return out

    def answer(self, cmds, **results):
        """WorkDone for each Work in ``cmds``: results by job class name, else a default."""
        out = []
        for w in of(cmds, C.Work):
            name = type(w.job).__name__
            result = results.get(name, DEFAULTS.get(name, lambda j: None))
            result = result(w.job) if callable(result) else result
            if isinstance(result, R.WorkDone):
                out += self.feed(R.WorkDone(w.token, result.result, result.error, result.cause))
            else:
                out += self.feed(R.WorkDone(w.token, result))
        return out

    def fail(self, rank, kind=failures.CRASH, **kw):
        self.feed(R.Failed(Failure(rank=rank, kind=kind, ts=self.now, step=5, phase=2, **kw)))
        if kind == failures.CRASH:
            self.feed(R.Gone(rank))
        return self.tick(1.0)          # the settle window is over: decide

    def states(self, cmds, completed=5, usable=True, skip=()):
        """STATE for each QUERY in ``cmds``; ``cmds`` (its pending Work) + what came back."""
        out = list(cmds)
        for s in of(cmds, C.Send):
            if s.type is Msg.QUERY and s.rank not in skip:
                out += self.feed(R.StateAnswer(s.rank, {"completed": completed, "usable": usable,
                                                        "nbytes": 64, "shard": s.rank % self.shards}))
        return out

    def write_all(self, cmds, ok=True):
        out = []
        for s in of(cmds, C.Send):
            if s.type is Msg.SNAPSHOT:
                out += self.feed(R.SnapshotDone(s.rank, {"id": s.body["id"], "stripe": s.body["stripes"][0],
                                                         "ok": ok, "bytes": 32}))
        return out

    def stop(self, cmds, lost=None):
        """The shell's answer to CheckRunDir (and so to the StopJob that may follow)."""
        return self.feed(R.RunDirChecked(lost)) if of(cmds, C.CheckRunDir) else []


def _prepare(job):
    base = ROOT / f"snap-a{job.attempt}-s{job.step}-0"
    dirs = {s: base if job.num_shards == 1 else base / f"shard-{s}" for s in job.nstripes}
    files = {s: [f"stripe-{j}-of-{k}" for j in range(k)] for s, k in job.nstripes.items()}
    return {"base": base, "id": base.name[5:], "dirs": dirs, "files": files}


DEFAULTS = {
    "Survey": {"checkfree_plus": False, "periodic": True, "pipeline": True},
    "Prepare": _prepare,
    "Publish": lambda j: {"manifests": {s: d / "manifest.json" for s, d in j.dirs.items()}},
    "Rebuild": lambda j: {"manifest": j.base / f"shard-{j.action.stage}" / "manifest.json",
                          "weights": [0.5, 0.5], "norms": [1.0, 2.0]},
    "Seal": lambda j: {"resume": j.base / "snapshot.json"},
    "FindFallback": None,
}


def recover(job, cmds, **work):
    """QUERY answered, survey, prepare, write, publish: the commands up to CheckRunDir."""
    cmds = job.states(cmds)
    cmds += job.answer(cmds, **work)          # survey -> prepare
    cmds += job.answer(cmds, **work)          # prepare -> SNAPSHOT requests
    cmds += job.write_all(cmds)
    cmds += job.answer(cmds, **work)          # publish
    return cmds


def test_crash_snapshot_by_the_survivors_then_restart_from_it(tmp_path):
    job = Job(tmp_path)
    cmds = job.fail(1)
    assert job.p.state is State.RECOVERING
    assert sorted(s.rank for s in of(cmds, C.Send) if s.type is Msg.QUERY) == [0, 2]
    [fd] = events(cmds, "failure_detected")
    assert fd.fields["rank"] == 1 and fd.fields["root_cause"] is True and fd.at == 0.0
    cmds = job.answer(job.states(cmds))
    [prep] = [w.job for w in of(cmds, C.Work) if isinstance(w.job, C.Prepare)]
    assert prep.nstripes == {0: 2} and prep.step == 5
    cmds = job.answer(cmds)
    snaps = [s for s in of(cmds, C.Send) if s.type is Msg.SNAPSHOT]
    assert [(s.rank, s.body["stripes"], s.body["files"], s.body["nstripes"]) for s in snaps] == [
        (0, [0], ["stripe-0-of-2"], 2), (2, [1], ["stripe-1-of-2"], 2)]
    cmds = job.write_all(cmds)
    # Every stripe written: the job is stopped while the snapshot is published.
    [stop] = of(cmds, C.StopJob)
    assert stop == C.StopJob([1], failures.CRASH, published=True)
    [pub] = [w.job for w in of(cmds, C.Work)]
    assert isinstance(pub, C.Publish) and pub.world_size == 3
    assert not of(cmds, C.StartJob)
    cmds = job.answer(cmds)
    assert events(cmds, "snapshot_done")[0].fields["stripes"] == 2
    assert of(cmds, C.CheckRunDir)
    cmds = job.feed(R.RunDirChecked(None))
    assert not of(cmds, C.StopJob) and of(cmds, C.Sweep)
    [restart] = events(cmds, "restart")
    assert restart.fields["step"] == 5 and restart.fields["root_cause"] == [1]
    manifest = ROOT / "snap-a0-s5-0" / "manifest.json"
    assert of(cmds, C.StartJob) == [C.StartJob(1, manifest)]
    assert job.p.attempt == 1 and job.p.root_history == [1] and job.p.state is State.STARTING
    # The restarted job resumes: replayed counts from the steps started before.
    job.feed(R.JobStarted(pid=200))
    job.feed(R.Hello(0, pid=1, world_size=3))
    [res] = events(job.feed(R.Resumed(0, step=5, manifest=str(manifest))), "resumed")
    assert res.fields["replayed"] == 1


def test_a_failed_writer_has_its_stripe_reassigned(tmp_path):
    job = Job(tmp_path)
    cmds = job.fail(1)
    cmds = job.states(cmds)
    cmds = job.answer(job.answer(cmds))
    snap0 = next(s for s in of(cmds, C.Send) if s.rank == 0)
    cmds = job.feed(R.SnapshotDone(0, {"id": snap0.body["id"], "stripe": 0, "ok": False,
                                       "error": "write /x: ENOSPC (No space left on device)"}))
    [again] = of(cmds, C.Send)
    assert again.rank == 2 and again.body["stripes"] == [0]
    [ev] = events(cmds, "snapshot_requested")
    assert ev.fields["reassigned_from"] == 0 and "ENOSPC" in ev.fields["error"]


def test_every_writer_gone_falls_back_and_without_a_fallback_gives_up(tmp_path):
    job = Job(tmp_path)
    cmds = job.fail(1)
    cmds = job.answer(job.answer(job.states(cmds)))
    job.feed(R.Gone(0))
    cmds = job.feed(R.Gone(2))
    [w] = of(cmds, C.Work)
    assert w.job == C.FindFallback(1)
    cmds = job.answer(cmds)                       # nothing on disk
    cmds = job.stop(cmds)
    [gave] = events(cmds, "gave_up")
    assert "every replica of shard 0 failed" in gave.fields["reason"]
    assert "no complete snapshot to fall back to" in gave.fields["reason"]
    assert job.p.finished == C.Finish(ExitCode.JOB_FAILED, gave.fields["reason"])


def test_snapshot_timeout_falls_back_to_the_newest_snapshot_on_disk(tmp_path):
    job = Job(tmp_path, snapshot_timeout_s=5.0)
    cmds = job.fail(1)
    cmds = job.answer(job.answer(job.states(cmds)))
    cmds = job.tick(job.p.opts.snapshot_wait_s + 1)
    old = ROOT / "snap-p0-s3-shard0" / "manifest.json"
    cmds = job.answer(cmds, FindFallback={"manifest": old, "step": 3})
    cmds = job.stop(cmds)
    [restart] = events(cmds, "restart")
    assert restart.fields["fallback"] is True and "not finished within" in restart.fields["reason"]
    assert of(cmds, C.StartJob) == [C.StartJob(1, old)]


def test_no_usable_replica_says_why_rank_by_rank(tmp_path):
    job = Job(tmp_path, world=2)
    cmds = job.fail(1)
    cmds = job.states(cmds, usable=False)
    cmds = job.answer(cmds)
    cmds = job.answer(cmds)                       # FindFallback: nothing
    cmds = job.stop(cmds)
    reason = events(cmds, "gave_up")[0].fields["reason"]
    assert reason.startswith("no usable replica (rank 0: state not usable")
    assert "rank 1: crash" in reason


def test_a_silent_rank_ends_the_query_at_its_deadline(tmp_path):
    job = Job(tmp_path)
    cmds = job.fail(1)
    cmds = job.answer(job.states(cmds, skip={2}))
    assert not [w for w in of(cmds, C.Work) if isinstance(w.job, C.Prepare)]
    cmds = job.tick(job.p.opts.query_timeout_s + 0.1)
    [prep] = [w.job for w in of(cmds, C.Work)]
    assert prep.nstripes == {0: 1}


def test_recoverable_failure_is_an_event_and_nothing_stops(tmp_path):
    job = Job(tmp_path)
    cmds = job.feed(R.Failed(Failure(rank=0, kind="cuda-error", ts=0.0,
                                     severity=Severity.RECOVERABLE, extra={"error": "cudaErrorNotReady"})))
    [ev] = events(cmds, "failure_detected")
    assert ev.fields["severity"] == "recoverable"
    assert job.tick(5.0) == [] and job.p.state is State.RUNNING


def test_untrusted_kind_never_writes_even_when_not_the_root_cause(tmp_path):
    job = Job(tmp_path)
    job.feed(R.Failed(Failure(rank=2, kind=failures.EXCEPTION, ts=0.5, step=5)))
    cmds = job.fail(1)
    assert sorted(s.rank for s in of(cmds, C.Send)) == [0]


def test_supervisor_backstop_blames_all_when_no_watchdog_reports(tmp_path):
    job = Job(tmp_path)
    assert job.tick(30.0) == []                      # the ranks' own deadline, not passed
    cmds = job.tick(30.0)      # past it + the margin: every rank stalled, all accounted for
    assert job.p.state is State.RECOVERING
    blamed = [e.fields["rank"] for e in events(cmds, "failure_detected") if e.fields.get("root_cause")]
    assert blamed == [0, 1, 2]


def test_pipeline_lost_inner_stage_is_rebuilt_then_the_index_sealed(tmp_path):
    job = Job(tmp_path, world=4, shards=4)
    cmds = job.fail(2)
    cmds = recover(job, cmds)
    preps = [c for c in job.log if isinstance(c, C.Work) and isinstance(c.job, C.Prepare)]
    assert preps[0].job.nstripes == {0: 1, 1: 1, 3: 1}      # stage 2 has no writer
    [rb] = [w.job for w in of(cmds, C.Work) if isinstance(w.job, C.Rebuild)]
    assert isinstance(rb, C.Rebuild) and rb.action.stage == 2
    assert rb.action.action is Action.CHECKFREE_MERGE and rb.action.sources == (1, 3)
    cmds = job.answer(cmds)
    [ev] = events(cmds, "stage_rebuilt")
    assert ev.fields["method"] == "checkfree" and ev.fields["neighbours"] == [1, 3]
    [seal] = [w.job for w in of(cmds, C.Work)]
    assert isinstance(seal, C.Seal) and sorted(seal.manifests) == [0, 1, 2, 3]
    cmds = job.stop(job.answer(cmds))
    [start] = of(cmds, C.StartJob)
    assert start.resume.name == "snapshot.json"


def test_pipeline_edge_stage_without_checkfree_plus_or_periodic_net_stops(tmp_path):
    # plan.py's ERROR path: nothing on disk to fall back to is known before any search.
    job = Job(tmp_path, world=4, shards=4)
    cmds = job.fail(0)
    cmds = job.states(cmds)
    cmds = job.answer(cmds, Survey={"checkfree_plus": False, "periodic": False})
    assert not of(cmds, C.Work)
    cmds = job.stop(cmds)
    reason = events(cmds, "gave_up")[0].fields["reason"]
    assert reason.startswith("cannot recover without a periodic checkpoint")


def test_pipeline_edge_stage_with_a_periodic_net_falls_back(tmp_path):
    job = Job(tmp_path, world=4, shards=4)
    cmds = job.fail(0)
    cmds = job.answer(job.states(cmds))
    [w] = of(cmds, C.Work)
    assert w.job == C.FindFallback(4)


def test_a_publish_error_carries_its_cause_to_the_restart(tmp_path):
    job = Job(tmp_path)
    cause = Cause("publish /run/x: ENOSPC (No space left on device)", "ENOSPC", "/run/x")
    cmds = recover(job, job.fail(1),
                   Publish=R.WorkDone(0, error=cause.text, cause=cause))
    old = ROOT / "snap-a0-s4-0" / "manifest.json"
    cmds = job.stop(job.answer(cmds, FindFallback={"manifest": old, "step": 4}))
    [restart] = events(cmds, "restart")
    assert restart.fields["errno"] == "ENOSPC" and restart.fields["fallback"] is True


def test_unprotected_job_restarts_from_scratch(tmp_path):
    p = Planner(Options(command=("true",), run_dir=tmp_path / "r", lib=Path("/x")))
    p.begin()
    p.feed(R.JobStarted(1), 0.0)
    p.feed(R.JobExited(1), 0.0)
    cmds = p.tick(1.0)
    assert [c for c in cmds if isinstance(c, C.Work)][0].job == C.Survey()
    cmds = p.feed(R.WorkDone(1, {"checkfree_plus": False, "periodic": False}), 1.0)
    assert [c for c in p.feed(R.RunDirChecked(None), 1.0) if isinstance(c, C.StopJob)]
    cmds = p.feed(R.JobStopped(0.0, None, 0, []), 1.0)
    assert [c for c in cmds if isinstance(c, C.StartJob)] == [C.StartJob(1, None)]


def test_restarts_exhausted_decides_before_the_resume_point(tmp_path):
    job = Job(tmp_path, max_restarts=0)
    cmds = job.stop(recover(job, job.fail(1)))
    assert job.p.finished.code is ExitCode.RESTARTS_EXHAUSTED
    assert not of(cmds, C.StartJob)


def test_run_dir_lost_during_recovery_says_so(tmp_path):
    job = Job(tmp_path)
    lost = Cause("run directory /r vanished: ENOENT (No such file or directory)", "ENOENT", "/r")
    cmds = job.stop(recover(job, job.fail(1)), lost=lost)
    [gave] = events(cmds, "gave_up")
    assert gave.fields["kind"] == "run_dir_lost" and job.p.finished.code is ExitCode.JOB_FAILED


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, ExitCode.INTERRUPTED),
                                         (signal.SIGTERM, ExitCode.TERMINATED)])
def test_interrupted_stops_the_job_then_finishes(tmp_path, signum, code):
    job = Job(tmp_path)
    cmds = job.feed(R.Interrupted(signum, signal.Signals(signum).name))
    assert of(cmds, C.StopJob) == [C.StopJob(None, None, False)]
    assert events(cmds, "gave_up")[0].fields["kind"] == "interrupted"
    assert job.p.finished.code is code


def test_clean_end_and_an_early_exit(tmp_path):
    job = Job(tmp_path)
    for r in range(3):
        job.feed(R.Goodbye(r))
        job.feed(R.Gone(r))
    cmds = job.feed(R.JobExited(0))
    assert of(cmds, C.StopJob)
    assert events(cmds, "finished") and job.p.finished.code is ExitCode.SUCCESS
    job = Job(tmp_path)
    job.feed(R.JobExited(0))              # exit 0 while ranks still run: a failure
    assert job.p.state is State.SETTLING
    fd = events(job.tick(1.0), "failure_detected")[0]
    assert fd.fields["kind"] == failures.EXIT and "still running" in fd.fields["detail"]


def test_the_launcher_exit_is_in_the_no_replica_reason(tmp_path):
    job = Job(tmp_path, world=2)
    for r in range(2):
        job.feed(R.Gone(r))
    cmds = job.tick(1.0, rc=-9)
    cmds = job.answer(cmds)
    cmds = job.stop(job.answer(cmds))
    reason = events(cmds, "gave_up")[0].fields["reason"]
    assert "the launcher (pid 100) exited by SIGKILL and ranks [0, 1] went with it" in reason


def test_a_report_from_another_node_is_just_another_input(tmp_path):
    job = Job(tmp_path, world=4)            # Hello carries node = rank % 2
    assert [job.p.ranks[r].node for r in range(4)] == [0, 1, 0, 1]
    cmds = job.fail(3)
    assert sorted(s.rank for s in of(cmds, C.Send)) == [0, 1, 2]


def test_a_silent_straggler_is_blamed_not_the_peer_whose_watchdog_reported(tmp_path):
    job = Job(tmp_path, world=2)
    job.feed(R.Progress(0, step=5, completed=4, phase="forward"))     # then stopped: silent
    job.feed(R.Progress(1, step=5, completed=4, phase="backward"))
    job.feed(R.Failed(Failure(rank=1, kind=failures.HANG, ts=0.0, step=5, phase=2,
                              progress=(4, 2, 3))))
    cmds = job.tick(1.0)
    blamed = [e.fields["rank"] for e in events(cmds, "failure_detected") if e.fields.get("root_cause")]
    assert blamed == [0]
    assert [s.rank for s in of(cmds, C.Send)] == [1]        # the waiting peer writes


def test_ranks_that_registered_nothing_restart_from_scratch(tmp_path):
    job = Job(tmp_path)                      # PROGRESS came: an active shim sends it anyway
    cmds = job.fail(1)
    for s in of(cmds, C.Send):
        cmds += job.feed(R.StateAnswer(s.rank, {"completed": 5, "usable": False, "nbytes": 0}))
    cmds = job.stop(job.answer(cmds))
    assert of(cmds, C.StartJob) == [C.StartJob(1, None)] and not events(cmds, "gave_up")


@pytest.mark.parametrize("periodic", [True, False])
def test_fsdp_shard_that_lost_every_copy_is_never_rebuilt_from_neighbours(tmp_path, periodic):
    # Four shards without stage layout records (FSDP): shard 2 lost its only copy.
    job = Job(tmp_path, world=4, shards=4)
    cmds = job.answer(job.states(job.fail(2)),
                      Survey={"checkfree_plus": False, "periodic": periodic, "pipeline": False})
    assert not [w for w in of(cmds, C.Work) if isinstance(w.job, (C.Prepare, C.Rebuild))]
    if periodic:
        [w] = of(cmds, C.Work)
        assert w.job == C.FindFallback(4)
        cmds = job.answer(cmds)
    reason = events(job.stop(cmds), "gave_up")[0].fields["reason"]
    assert "shard 2 lost every copy" in reason
    if not periodic:
        assert reason.startswith("cannot recover without a periodic checkpoint")


def test_hsdp_shard_with_a_surviving_copy_is_written_by_it(tmp_path):
    # Mesh (2 replicas, 2 shards): ranks 0,1 hold shards 0,1 and ranks 2,3 their copies.
    job = Job(tmp_path, world=4, shards=2)
    cmds = job.answer(job.states(job.fail(1)),
                      Survey={"checkfree_plus": False, "periodic": False, "pipeline": False})
    [prep] = [w.job for w in of(cmds, C.Work) if isinstance(w.job, C.Prepare)]
    assert prep.nstripes == {0: 2, 1: 1}


def test_a_writer_that_moved_on_is_asked_again_not_dropped(tmp_path):
    # The launcher died, its ranks train on: the step they answered is gone by the SNAPSHOT.
    job = Job(tmp_path, world=2)
    cmds = job.answer(job.answer(job.states(job.fail(1))))
    snap = next(s for s in of(cmds, C.Send) if s.type is Msg.SNAPSHOT)
    cmds = job.feed(R.SnapshotDone(0, {"id": snap.body["id"], "stripe": 0, "ok": False,
                                       "error": "step mismatch: rank has completed 6, asked for 5"}))
    assert [s.rank for s in of(cmds, C.Send) if s.type is Msg.QUERY] == [0]
    cmds = job.answer(job.states(cmds, completed=6))      # the survey is kept: prepare only
    [again] = [s for s in of(cmds, C.Send) if s.type is Msg.SNAPSHOT]
    assert again.body["step"] == 6 and again.body["id"] != snap.body["id"]
    cmds = job.write_all(cmds)
    assert of(cmds, C.StopJob)                     # written: the run goes on as usual
