"""jitc export-dcp: a published snapshot loaded with torch.distributed.checkpoint, into one
process and into a 2-rank FSDP2 job (gloo, CPU), equal bit for bit to what was saved.

Snapshots are written by the native engine (checkfree.writer), with the names jitc
registers (jitc/state.py) and, for HSDP, shards' local pieces with the sharding record the
FSDP2 ranks write (docs/internals.md "The meta blob")."""
from __future__ import annotations

import os
import re
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn

from jitc import state as st
from jitc.checkfree.writer import write_snapshot
from jitc.cli import main
from jitc.errors import CorruptSnapshotError, JitcError
from jitc.snapshot import layout, load
from jitc.snapshot.export_dcp import OptimizerState
from jitc.snapshot.loader import LoadedSnapshot
from jitc.snapshot.meta import encode
from jitc.snapshot.unshard import assemble

from .conftest import bitwise_equal

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
STEP = 7
PLAIN = {"model.scale"}   # a buffer: FSDP2 leaves it a plain tensor, the same in every shard


class Net(nn.Module):
    """Rows 5, 3 and 1 over 2 shards: 3+2, 2+1 and 1+0 (an empty piece)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(3, 1)
        self.register_buffer("scale", torch.arange(3.0).to(torch.bfloat16))

    def forward(self, x):
        return self.c(self.b(self.a(x)) * self.scale.float())


def trained(seed: int = 0, steps: int = 2):
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(steps):
        net(torch.randn(6, 4)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return net, opt, sched


def registered(net, opt) -> dict[str, torch.Tensor]:
    """The state under jitc's registered names (full tensors of DTensors)."""
    items = st.model_tensors(net) + st.optimizer_tensors(opt)
    return {i.name: (i.tensor.full_tensor() if hasattr(i.tensor, "full_tensor") else i.tensor)
            .detach().clone() for i in items}


def meta_of(opt, sched) -> dict:
    return {"completed": STEP, "seed": 0, "optim": st.optimizer_scalars(opt),
            "scheduler": sched.state_dict(), "extra": {"data": {"epoch": 1, "position": 12}}}


def rows(n: int, s: int, shards: int = 2) -> tuple[int, int]:
    """FSDP2's split of dim 0: chunks of ceil(n / shards), the last ones short or empty."""
    chunk = -(-n // shards)
    start = min(s * chunk, n)
    return start, min(start + chunk, n)


def write_hsdp(snap, tensors: dict, meta: dict, edit=lambda s, entries: None):
    """A (2 replicas x 2 shards) HSDP snapshot: one copy of each shard, Shard(0) pieces."""
    manifests = {}
    for s in range(2):
        local, entries = {}, {}
        for name, t in tensors.items():
            if name in PLAIN or name.endswith(".step"):   # Adam's step: a plain tensor
                local[name] = t
                continue
            a, b = rows(t.shape[0], s)
            local[name] = t[a:b].clone()
            entries[name] = {"global_shape": list(t.shape), "placements": ["R", "S(0)"],
                             "offset": [a] + [0] * (t.dim() - 1),
                             "local_shape": list(local[name].shape)}
        edit(s, entries)
        record = {"mesh_shape": [2, 2], "mesh_dim_names": ["replicate", "shard"],
                  "coordinate": [0, s], "shard": s, "num_shards": 2, "tensors": entries}
        manifests[s] = write_snapshot(layout.shard_dir(snap, s, 2), STEP, local,
                                      encode({**meta, "sharding": record}), world_size=4)
    return layout.write_index(snap, manifests, world_size=4)


def jitc(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    return e.value.code, capsys.readouterr().err


def load_into_one_process(out):
    """A fresh model, optimizer (no state yet) and scheduler, loaded from ``out`` as the
    README says."""
    net, opt, sched = trained(seed=1, steps=0)
    target = {"model": net.state_dict(), "optim": OptimizerState(opt),
              "scheduler": sched.state_dict(), "step": -1}
    dcp.load(target, checkpoint_id=out, no_dist=True)
    sched.load_state_dict(target["scheduler"])
    return net, opt, sched, target["step"]


def assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    bad = [k for k in want if not bitwise_equal(got[k], want[k])]
    assert not bad, f"differ: {bad}"


def test_ddp_snapshot_loads_bitwise_into_one_process(tmp_path, capsys):
    net, opt, sched = trained()
    want = registered(net, opt)
    manifest = write_snapshot(tmp_path / "snap", STEP, want, encode(meta_of(opt, sched)),
                              world_size=2)
    out = tmp_path / "dcp"
    code, err = jitc(capsys, "export-dcp", manifest.parent, out)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o600}
    net2, opt2, sched2, step = load_into_one_process(out)
    assert step == STEP
    assert_same(registered(net2, opt2), want)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.0025
    assert sched2.state_dict() == sched.state_dict()
    extra = {"extra": {"data": {"epoch": 0, "position": 0}}}
    dcp.load(extra, checkpoint_id=out, no_dist=True)
    assert extra["extra"]["data"] == {"epoch": 1, "position": 12}


def test_hsdp_snapshot_is_assembled_and_loads_into_one_process(tmp_path, capsys):
    net, opt, sched = trained()
    want = registered(net, opt)
    index = write_hsdp(tmp_path / "snap", want, meta_of(opt, sched))
    with pytest.raises(SystemExit) as e:
        main(["export-dcp", str(index), str(tmp_path / "dcp")])
    assert e.value.code == 0
    assert capsys.readouterr().out == (f"exported step {STEP} (25 tensors from 2 shards) "
                                       f"to {tmp_path / 'dcp'}\n")
    net2, opt2, _, step = load_into_one_process(tmp_path / "dcp")
    assert step == STEP
    assert_same(registered(net2, opt2), want)


def _fsdp2_rank(rank: int, init: str, out: str, expected: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (2,))
        torch.manual_seed(1)
        net = Net()
        fully_shard(net.a, mesh=mesh)
        fully_shard(net, mesh=mesh)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        target = {"model": net.state_dict(), "optim": OptimizerState(opt), "step": -1}
        dcp.load(target, checkpoint_id=out)
        want = torch.load(expected)
        assert type(net.a.weight).__name__ == "DTensor"
        assert net.a.weight.to_local().shape == (3 - rank, 4)      # this rank's rows only
        assert target["step"] == want["step"]
        assert_same(registered(net, opt), want["tensors"])
        assert opt.param_groups[0]["lr"] == want["lr"]
        dist.barrier()      # no rank tears gloo down while its peer is still in a collective
    except BaseException:
        dist.destroy_process_group()
        raise
    # Checked, and both ranks past the barrier: leave without gloo's teardown, which aborted
    # a rank now and then ("terminate called without an active exception", 2 CI runs of
    # ~8, torch 2.13, after the barrier too): nothing of the test is left to run.
    os._exit(0)


def test_hsdp_snapshot_of_4_ranks_loads_into_a_2_rank_fsdp2_job(tmp_path, capsys):
    net, opt, sched = trained()
    want = registered(net, opt)
    index = write_hsdp(tmp_path / "snap", want, meta_of(opt, sched))
    code, err = jitc(capsys, "export-dcp", index.parent, tmp_path / "dcp")
    assert code == 0, err
    torch.save({"tensors": want, "lr": opt.param_groups[0]["lr"], "step": STEP},
               tmp_path / "want.pt")
    spawn(_fsdp2_rank, 2, str(tmp_path / "init"), str(tmp_path / "dcp"), str(tmp_path / "want.pt"))


def spawn(fn, nprocs: int, *args, timeout: float = 240) -> None:
    ctx = mp.spawn(fn, nprocs=nprocs, join=False, args=args)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):     # a rank's exception is raised here, with its traceback
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs}-rank job did not finish in {timeout} s")


def _protected_hsdp_rank(rank: int, init: str, out: str) -> None:
    """One of 4 ranks of a real HSDP job under ``jitc.protect`` (mesh (2, 2)): two steps,
    then the snapshot this rank's engine writes of its shard, as tests/fsdp/fsdp_rank.py
    does; rank 0 keeps the full tensors."""
    import jitc
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    torch.set_num_threads(1)
    for name in [k for k in os.environ if k.startswith("JITC_")] + ["LD_PRELOAD"]:
        os.environ.pop(name, None)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=4,
                            timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
        torch.manual_seed(0)
        net = Net()
        fully_shard(net.a, mesh=mesh)
        fully_shard(net, mesh=mesh)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        session = jitc.protect(net, opt, scheduler=sched)
        for step in session.steps(3):
            if step == 2:
                session._write(Path(out) / f"snap-{rank}", 1, 0)
                break
            x = torch.randn(6, 4, generator=torch.Generator().manual_seed(10 * step + rank))
            net(x).square().sum().backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        want = registered(net, opt)        # full_tensor(): a collective, on every rank
        if rank == 0:
            torch.save({"tensors": want, "lr": opt.param_groups[0]["lr"], "step": 2},
                       Path(out) / "want.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_real_hsdp_snapshot_exports_and_loads_in_one_process_and_in_2_ranks(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    spawn(_protected_hsdp_rank, 4, str(tmp_path / "init4"), str(run))
    # Shards 0 and 1 as the copy group of replica 1 (ranks 2 and 3) wrote them.
    index = layout.write_index(run, {s: layout.manifest_path(run / f"snap-{2 + s}")
                                     for s in range(2)}, world_size=4)
    record = load(run / "snap-3").state["sharding"]
    assert record["shard"] == 1 and record["coordinate"] == [1, 1]
    assert record["tensors"]["model.c.weight"]["local_shape"] == [0, 3]   # an empty piece
    code, err = jitc(capsys, "export-dcp", index, tmp_path / "dcp")
    assert code == 0, err
    want = torch.load(run / "want.pt")
    assert sorted(want["tensors"]) == sorted(registered(*trained()[:2]))
    net, opt, _, step = load_into_one_process(tmp_path / "dcp")
    assert step == 2 and opt.param_groups[0]["lr"] == want["lr"] == 0.0025
    assert_same(registered(net, opt), want["tensors"])
    spawn(_fsdp2_rank, 2, str(tmp_path / "init2"), str(tmp_path / "dcp"), str(run / "want.pt"))


def test_pieces_that_overlap_or_leave_a_gap_are_refused(tmp_path, capsys):
    net, opt, sched = trained()
    want, meta = registered(net, opt), meta_of(opt, sched)

    def shift(s, entries):            # shard 1's rows of a.weight start one row early
        if s == 1:
            entries["model.a.weight"]["offset"] = [2, 0]
    write_hsdp(tmp_path / "overlap", want, meta, shift)
    code, err = jitc(capsys, "export-dcp", tmp_path / "overlap", tmp_path / "o1")
    assert code == 1 and err.count("\n") == 1
    assert "'model.a.weight': the pieces of shards 0 and 1 overlap" in err

    def grow(s, entries):             # both say a.weight has 6 rows: the 6th is nobody's
        entries["model.a.weight"]["global_shape"] = [6, 4]
    write_hsdp(tmp_path / "gap", want, meta, grow)
    code, err = jitc(capsys, "export-dcp", tmp_path / "gap", tmp_path / "o2")
    assert code == 1 and err.count("\n") == 1
    assert "'model.a.weight': the shards' pieces cover 20 of its 24 elements [6, 4]" in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_a_missing_shard_is_named(tmp_path, capsys):
    net, opt, sched = trained()
    index = write_hsdp(tmp_path / "snap", registered(net, opt), meta_of(opt, sched))
    one = layout.manifest_path(layout.shard_dir(index.parent, 0, 2))
    code, err = jitc(capsys, "export-dcp", one, tmp_path / "dcp")
    assert code == 1 and "shard 1 of 2 missing" in err and err.count("\n") == 1


def test_corrupt_snapshot_exits_1_in_one_line_and_writes_nothing(tmp_path, capsys):
    net, opt, sched = trained()
    manifest = write_snapshot(tmp_path / "snap", STEP, registered(net, opt),
                              encode(meta_of(opt, sched)))
    with open(manifest.parent / "stripe-0-of-1.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 4)
    code, err = jitc(capsys, "export-dcp", manifest, tmp_path / "out" / "dcp")
    assert code == 1 and err.count("\n") == 1 and err.startswith("jitc: error: ")
    assert "crc32c" in err.lower()
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_neither_out_nor_a_temporary(tmp_path, capsys, monkeypatch):
    net, opt, sched = trained()
    manifest = write_snapshot(tmp_path / "snap", STEP, registered(net, opt),
                              encode(meta_of(opt, sched)))

    def full_disk(self, plan, planner):
        raise OSError(28, "No space left on device", str(self.path / "__0_0.distcp"))
    monkeypatch.setattr(dcp.FileSystemWriter, "write_data", full_disk)
    (tmp_path / "out").mkdir()
    code, err = jitc(capsys, "export-dcp", manifest, tmp_path / "out" / "dcp")
    assert code == 1 and "No space left on device" in err and err.count("\n") == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_non_empty_out_is_a_usage_error(tmp_path, capsys):
    net, opt, sched = trained()
    manifest = write_snapshot(tmp_path / "snap", STEP, registered(net, opt),
                              encode(meta_of(opt, sched)))
    out = tmp_path / "dcp"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = jitc(capsys, "export-dcp", manifest, out)
    assert code == 2 and "is not empty" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert jitc(capsys, "export-dcp", tmp_path / "nothing-here", tmp_path / "x")[0] == 2
    out.joinpath("keep.txt").unlink()   # an empty OUT is fine
    assert jitc(capsys, "export-dcp", manifest, out)[0] == 0


# -- unshard.assemble on its own: records that do not fit together ------------------------
def _shard(s: int, pieces: dict, step: int = STEP) -> LoadedSnapshot:
    """A loaded shard s of 2 holding ``pieces``: name -> (tensor, offset, placements)."""
    entries = {n: {"global_shape": [4, 2], "placements": pl, "offset": off,
                   "local_shape": list(t.shape)} for n, (t, off, pl) in pieces.items()}
    record = {"mesh_shape": [2, 2], "mesh_dim_names": None, "coordinate": [0, s], "shard": s,
              "num_shards": 2, "tensors": entries}
    return LoadedSnapshot(step=step, tensors={n: t for n, (t, _, _) in pieces.items()},
                          meta=b"", manifest={}, path=Path(f"shard-{s}"),
                          state={"sharding": record})


W = torch.arange(8.0).reshape(4, 2)


def test_assemble_takes_a_piece_every_shard_holds_once_if_equal_everywhere():
    shards = [_shard(s, {"model.w": (W[2 * s:2 * s + 2], [2 * s, 0], ["R", "S(0)"]),
                         "model.r": (W.clone(), [0, 0], ["R", "R"])}) for s in range(2)]
    tensors, _, step = assemble(shards, [0, 1])
    assert step == STEP and torch.equal(tensors["model.w"], W) and torch.equal(
        tensors["model.r"], W)
    shards[1].tensors["model.r"][0, 0] = -1
    with pytest.raises(CorruptSnapshotError, match="shards 0 and 1 hold different values"):
        assemble(shards)


@pytest.mark.parametrize("change, error, words", [
    (lambda sh: sh[1].state["sharding"]["tensors"]["model.w"].update(placements=["R", "P"]),
     JitcError, "a Partial placement"),
    (lambda sh: setattr(sh[1], "step", STEP + 1), CorruptSnapshotError,
     "shards of different steps"),
    (lambda sh: sh[1].state["sharding"].update(shard=0), CorruptSnapshotError,
     "the index lists it as shard 1, its sharding record says 0"),
    (lambda sh: sh[1].state["sharding"].update(mesh_shape=[1, 2]), CorruptSnapshotError,
     "mesh_shape [1, 2]"),
    (lambda sh: sh[1].state.pop("sharding"), CorruptSnapshotError, "no sharding record"),
    (lambda sh: [s.state.pop("sharding") for s in sh], JitcError,
     "2 shards without sharding records"),
    (lambda sh: sh[0].state.update(pipeline={"stage": 0, "num_stages": 2}), JitcError,
     "a pipeline stage's snapshot"),
])
def test_assemble_refuses_shards_that_are_not_one_model_in_one_line(change, error, words):
    shards = [_shard(s, {"model.w": (W[2 * s:2 * s + 2], [2 * s, 0], ["R", "S(0)"])})
              for s in range(2)]
    change(shards)
    with pytest.raises(error, match=re.escape(words)) as e:
        assemble(shards, [0, 1])
    assert "\n" not in str(e.value)
