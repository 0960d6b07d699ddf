"""The supervisor side of CheckFree without processes: plan, rebuild, write, resume."""
from __future__ import annotations

import pytest
import torch

import llama_tiny as L
from jitc import resume
from jitc.checkfree.layout import StageLayout, write_layout
from jitc.checkfree.plan import Action
from jitc.checkfree.rebuild import copy_neighbour, merge_neighbours
from jitc.checkfree.schedule import EdgeLayout
from jitc.checkfree.writer import write_snapshot
from jitc.errors import RecoveryError
from jitc.snapshot import layout, load
from jitc.snapshot.inspect import inspect_main
from jitc.snapshot.meta import encode
from jitc.checkfree.layout import any_checkfree_plus
from jitc.supervisor.planner.methods import plan_stages
from jitc.supervisor.stages import latest_complete_stages, rebuild_stage

CFG = L.Config(dim=16, hidden=32, seq=8)


def stage_state(stage: int, num: int = 4, plus: bool = False) -> dict[str, torch.Tensor]:
    edges = EdgeLayout(num, plus)
    m = L.Stage(CFG, embed=edges.holds_embedding(stage), head=edges.holds_head(stage))
    return {f"model.{k}": v for k, v in m.init_weights(0, stage).state_dict().items()}


def layout_of(stage: int, num: int = 4, plus: bool = False) -> StageLayout:
    st = stage_state(stage, num, plus)
    return StageLayout(stage, num, plus, tuple((k, "F32", tuple(v.shape)) for k, v in st.items()))


def test_plan_merges_a_lost_intermediate_stage_at_the_survivors_common_step(tmp_path):
    by_shard = {0: {5: [0]}, 1: {5: [1]}, 2: {}, 3: {5: [3]}}
    plan = plan_stages(by_shard, {0: 1, 1: 1, 2: 1, 3: 1}, any_checkfree_plus(tmp_path))
    assert plan.reason is None and plan.step == 5
    assert [(a.stage, a.action, a.sources) for a in plan.rebuilt] == [(2, Action.CHECKFREE_MERGE, (1, 3))]


def test_plan_refuses_survivors_at_different_steps(tmp_path):
    plan = plan_stages({0: {5: [0]}, 1: {6: [1]}, 2: {}, 3: {5: [3]}}, {}, any_checkfree_plus(tmp_path))
    assert plan.step is None and "different steps" in plan.reason and "stage 1 at [6]" in plan.reason


def test_plan_lost_edge_stage_needs_checkfree_plus(tmp_path):
    by_shard = {0: {}, 1: {3: [1]}, 2: {3: [2]}, 3: {3: [3]}}
    plan = plan_stages(by_shard, {}, any_checkfree_plus(tmp_path))
    assert "did not use the CheckFree+ schedule" in plan.reason
    write_layout(tmp_path, layout_of(1, plus=True))
    plan = plan_stages(by_shard, {}, any_checkfree_plus(tmp_path))
    assert plan.reason is None
    assert [(a.stage, a.action) for a in plan.rebuilt] == [(0, Action.CHECKFREE_PLUS_COPY)]


def test_merge_copies_replicated_edge_layers_and_weights_the_body():
    # CheckFree+ with 4 stages: stage 1 holds a replica of the embedding, its neighbours
    # are stage 0 (embedding + body) and stage 2 (body + head).
    lay = layout_of(1, plus=True)
    prev, nxt = stage_state(0, plus=True), stage_state(2, plus=True)
    out = merge_neighbours(lay, prev, nxt, 1.0, 3.0)
    assert list(out.tensors) == [n for n, _, _ in lay.tensors]
    assert out.weights == (0.25, 0.75)
    assert torch.equal(out.tensors["model.embed.weight"], prev["model.embed.weight"])
    k = "model.layers.0.attn.wq.weight"
    assert torch.allclose(out.tensors[k], 0.25 * prev[k] + 0.75 * nxt[k])
    assert "model.head.out.weight" not in out.tensors


def test_merge_without_recorded_norms_uses_equal_weights_and_says_so():
    out = merge_neighbours(layout_of(2), stage_state(1), stage_state(3), None, 2.0)
    assert out.weights == (0.5, 0.5) and out.norms == (None, 2.0)


def test_merge_names_an_entry_no_neighbour_holds():
    lay = layout_of(1)
    lay = StageLayout(1, 4, False, lay.tensors + (("model.extra.weight", "F32", (2,)),))
    with pytest.raises(RecoveryError, match="no neighbour holds 'model.extra.weight'"):
        merge_neighbours(lay, stage_state(0), stage_state(2), 1.0, 1.0)


def test_copy_needs_alike_stages():
    with pytest.raises(RecoveryError):
        copy_neighbour(layout_of(0), stage_state(1))        # without CheckFree+: no embedding


def test_written_snapshot_verifies_and_loads(tmp_path):
    tensors = stage_state(2)
    manifest = write_snapshot(tmp_path / "s", 7, tensors, encode({"completed": 7}))
    assert inspect_main(manifest.parent, out=open("/dev/null", "w")) == 0
    snap = load(manifest)
    assert snap.step == 7 and snap.state == {"completed": 7}
    assert all(torch.equal(snap.tensors[k], v) for k, v in tensors.items())
    (manifest.parent / "stripe-0-of-1.safetensors").open("r+b").write(b"\x00" * 9)
    assert inspect_main(manifest.parent, out=open("/dev/null", "w"),
                        err=open("/dev/null", "w")) == 1


class _Session:
    """What resume.restore touches."""

    def __init__(self, stage: int):
        self.model = L.Stage(CFG).init_weights(1, stage)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: min(1.0, (i + 1) / 4))
        self.extra_state, self._recorded, self.supervised = {}, {}, True
        self.stage, self.num_stages = stage, 4


def _meta(stage: int, opt, sched, norm: float) -> bytes:
    return encode({
        "completed": 3, "seed": 0, "extra": {}, "record": {"grad_norm": norm},
        "optim": {"param_groups": [{k: v for k, v in g.items() if k != "params"}
                                   for g in opt.param_groups], "per_param": {}},
        "scheduler": sched.state_dict(), "pipeline": {"stage": stage, "num_stages": 4}})


def test_rebuilt_stage_resumes_with_fresh_optimizer_and_boosted_lr(tmp_path, monkeypatch):
    root, base = tmp_path, tmp_path / "snap-a0-s3-0"
    neighbours = {}
    for s, norm in ((1, 2.0), (3, 6.0)):
        sess = _Session(s)
        for _ in range(3):                                   # the job is at step 3
            sess.optimizer.step()
            sess.scheduler.step()
        neighbours[s] = sess
        state = {f"model.{k}": v for k, v in sess.model.state_dict().items()}
        write_snapshot(base / f"shard-{s}", 3, state,
                       _meta(s, sess.optimizer, sess.scheduler, norm))
    for s in (1, 2, 3):      # the sessions' stages are all body-only
        write_layout(root, StageLayout(s, 4, False, layout_of(1).tensors))
    action = plan_stages({0: {3: [0]}, 1: {3: [1]}, 2: {}, 3: {3: [3]}}, {}, root).rebuilt[0]
    manifest, result = rebuild_stage(action, base, root, 3, 4)
    assert result.weights == (0.25, 0.75) and result.norms == (2.0, 6.0)

    monkeypatch.setenv("JITC_RESUME", str(base / "shard-0" / "manifest.json"))  # shard 0's
    lost = _Session(2)
    step, path = resume.restore(lost)
    assert step == 3 and path == manifest
    k = "layers.0.attn.wq.weight"
    want = 0.25 * neighbours[1].model.state_dict()[k] + 0.75 * neighbours[3].model.state_dict()[k]
    assert torch.allclose(lost.model.state_dict()[k], want)
    assert not lost.optimizer.state                          # fresh: no Adam moments
    job_lr = neighbours[1].optimizer.param_groups[0]["lr"]
    assert lost.optimizer.param_groups[0]["lr"] == pytest.approx(1.1 * job_lr)
    lost.scheduler.step()                                    # and it stays boosted
    neighbours[1].scheduler.step()
    assert lost.optimizer.param_groups[0]["lr"] == pytest.approx(
        1.1 * neighbours[1].optimizer.param_groups[0]["lr"])
    assert lost._recorded == {}                              # its own norm comes next step

    other = _Session(1)                                      # a neighbour reads its own shard
    monkeypatch.setenv("JITC_RESUME", str(base / "shard-0" / "manifest.json"))
    assert resume.restore(other) == (3, base / "shard-1" / "manifest.json")
    assert other._recorded == {"grad_norm": 2.0}


def test_periodic_snapshots_of_every_stage_are_assembled_for_resume(tmp_path):
    for s in range(2):
        write_snapshot(tmp_path / f"snap-p0-s4-shard{s}", 4, stage_state(s, 2), encode({}))
    write_snapshot(tmp_path / "snap-p0-s6-shard0", 6, stage_state(0, 2), encode({}))   # stage 1 missing
    index = latest_complete_stages(tmp_path, 2)     # the index of the assembled set
    assert index is not None and index.name == layout.INDEX
    shards = layout.read_index(index)
    assert sorted(shards) == [0, 1] and all(load(m).step == 4 for m in shards.values())
    assert layout.resume_manifest(index, 1, 2) == shards[1]
    assert latest_complete_stages(tmp_path, 2) == index      # found again, not rewritten
    from jitc.supervisor.work import find_fallback
    found = find_fallback(tmp_path, 2)
    assert (found["manifest"], found["step"]) == (index, 4)   # the restart's step
    # ... and where its shards lie, for a node that lacks them (cluster/router.py)
    assert set(found["dirs"]) == {0, 1} and found["index_sha256"]
    assert latest_complete_stages(tmp_path, 3) is None
