"""One rank of the registration test (tests/fsdp/test_registration.py), under torchrun.

A small HSDP model (mesh (2, 2)) under ``jitc.protect``, trained a few steps; then this
rank has the native engine write its registry (what a JIT snapshot would hold) and checks
it against the live local shards, the sharding record against the mesh and the full
tensors, and a fresh model restored from that snapshot against the trained one. Writes
its findings to ``<out>/rank-<r>.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import jitc
from jitc import resume, sharding
from jitc import state as st
from jitc.errors import JitcError
from jitc.snapshot import load

STEPS = 3


def build(mesh):
    torch.manual_seed(0)
    # Odd sizes: shards of unequal length (torch.chunk's rule), offsets that matter.
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    model.register_buffer("scale", torch.full((3,), 0.5))    # plain, unsharded
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer


def train_step(model, optimizer, step: int, rank: int) -> None:
    gen = torch.Generator().manual_seed(step * 100 + rank)
    x = torch.randn(4, 8, generator=gen)
    (model(x) * model.scale).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def live_locals(model, optimizer) -> dict[str, torch.Tensor]:
    return {i.name: i.local for i in st.model_tensors(model) + st.optimizer_tensors(optimizer)}


def layouts(rank: int) -> dict:
    """What sharding.detect makes of a 1-D mesh, and of a 2-D mesh whose ranks are not
    laid out copy * shards + shard."""
    from torch.distributed.device_mesh import DeviceMesh
    flat = nn.Linear(4, 8)
    fully_shard(flat, mesh=init_device_mesh("cpu", (4,), mesh_dim_names=("shard",)))
    found = sharding.detect(flat, rank, 4)
    facts = {"flat": [found.shard, found.num_shards, found.replicas, list(found.mesh_shape)]}
    odd = nn.Linear(4, 8)
    fully_shard(odd, mesh=DeviceMesh("cpu", torch.tensor([[0, 2], [1, 3]]),
                                     mesh_dim_names=("replicate", "shard")))
    try:
        sharding.detect(odd, rank, 4)
        facts["misordered"] = None
    except JitcError as e:
        facts["misordered"] = str(e)
    return facts


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    facts: dict = {"rank": rank, "coordinate": list(mesh.get_coordinate())}
    model, optimizer = build(mesh)
    try:
        jitc.protect(model, optimizer, stage=0, num_stages=2)
    except JitcError as e:
        facts["pipeline_refused"] = str(e)
    session = jitc.protect(model, optimizer)
    facts["shard"], facts["num_shards"] = session.stage, session.num_stages
    facts["pipeline"] = session.pipeline
    snap_dir = out / f"snap-{rank}"
    initial = {i.name: i.local.clone() for i in st.model_tensors(model)
               if sharding.is_sharded(i.tensor)}
    for step in session.steps(STEPS + 1):
        if step == STEPS:    # after STEPS optimizer steps, the window closed
            session._write(snap_dir, 1, 0)
            break
        train_step(model, optimizer, step, rank)
    snap = load(snap_dir)
    live = live_locals(model, optimizer)
    facts["names"] = sorted(snap.tensors)
    facts["live_names"] = sorted(live)
    facts["bitwise"] = {k: bool(torch.equal(snap.tensors[k], v)) for k, v in live.items()
                        if k in snap.tensors}
    # The engine read the registered pointers: equal to the live shards *and* moved away
    # from the initial weights means it read the storage the optimizer updated in place.
    facts["trained"] = {k: not torch.equal(snap.tensors[k], v) for k, v in initial.items()}
    facts["adam_step"] = float(snap.tensors["optim.0.step"])
    record = snap.state["sharding"]
    facts["record"] = {k: v for k, v in record.items() if k != "tensors"}
    facts["record_names"] = sorted(record["tensors"])
    # Every entry's offset and local shape cut this rank's shard out of the full tensor.
    sources = {i.name: i.tensor for i in st.model_tensors(model) + st.optimizer_tensors(optimizer)}
    facts["slices"] = {}
    for name, entry in record["tensors"].items():
        full = sources[name].full_tensor()                  # a collective, same order on all
        cut = full[tuple(slice(o, o + n) for o, n in zip(entry["offset"], entry["local_shape"]))]
        facts["slices"][name] = bool(torch.equal(cut, snap.tensors[name]))
    facts["entry"] = record["tensors"]["model.2.weight"]

    # A fresh model and optimizer restored from the snapshot train on exactly alike.
    fresh, fresh_opt = build(mesh)
    with torch.no_grad():
        for item in st.model_tensors(fresh):
            item.local.copy_(snap.tensors[item.name])
        resume._restore_optimizer(fresh_opt, snap.tensors, snap.state["optim"],
                                  record["tensors"], snap_dir)
    state = fresh_opt.state[st.optimizer_params(fresh_opt)[0]]
    facts["restored_types"] = {k: type(v).__name__ for k, v in sorted(state.items())}
    for m, o in ((model, optimizer), (fresh, fresh_opt)):
        train_step(m, o, STEPS, rank)
    a, b = live_locals(model, optimizer), live_locals(fresh, fresh_opt)
    facts["after_restore_equal"] = a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) for k in a)
    facts.update(layouts(rank))
    (out / f"rank-{rank}.json").write_text(json.dumps(facts))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
