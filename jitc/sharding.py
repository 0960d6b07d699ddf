"""Sharded state (FSDP2 ``fully_shard``, HSDP): which shard this rank holds, and how.

Why this exists: an FSDP2 model's parameters, and the optimizer state built from them,
are DTensors; the bytes a rank owns are each DTensor's *local* tensor, and the optimizer
updates that storage in place (FSDP2 keeps ``_local_tensor`` a view of its padded shard
buffer for the whole run). Those local tensors are what jitc registers and snapshots.
The mesh says which shard they are: the mesh coordinate over the dimensions parameters
are ``Shard``-placed on is the shard, the other dimensions hold identical copies (HSDP's
``replicate``). The supervisor treats the shards as it treats pipeline stages: each one
striped over its healthy copies (HELLO ``shard``/``num_shards``), but without stage layout
records, so a shard that lost every copy goes to the periodic net, never to CheckFree.

The meta ``sharding`` record (plain data, snapshot/meta.py) describes every registered
DTensor-backed name, for resume checks and for export to torch.distributed.checkpoint::

    {"mesh_shape": [R, S], "mesh_dim_names": [...] | None, "coordinate": [r, s],
     "shard": s, "num_shards": S,
     "tensors": {name: {"global_shape": [...], "placements": ["R" | "S(<dim>)" | "P", ...],
                        "offset": [...], "local_shape": [...]}}}

WARNING: the planner and the periodic writer lay ranks out as ``rank = replica *
num_shards + shard`` (init_device_mesh's row-major ranks for a mesh ``(replicate,
shard)``); a mesh that orders them otherwise is refused when ``protect()`` starts.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from .errors import CorruptSnapshotError, JitcError


def _dtensor_type():
    # No DTensor exists unless torch.distributed.tensor was imported: a plain DDP job does
    # not pay for importing it.
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_sharded(tensor: torch.Tensor) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor whose bytes this rank holds: a DTensor's local shard, else itself."""
    if is_sharded(tensor):
        return tensor._local_tensor.detach()
    return tensor.detach()


@dataclass(frozen=True)
class Layout:
    """This rank's place in the mesh of a sharded model."""
    mesh: Any                  # the DeviceMesh
    coordinate: tuple[int, ...]
    shard: int
    num_shards: int
    replicas: int

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(self.mesh.shape)


def detect(model: torch.nn.Module, rank: int, world_size: int) -> Layout | None:
    """The layout of ``model``'s DTensor parameters, or None if it has none.

    JitcError, one line, for what jitc cannot protect: several meshes, a mesh that does not
    span the job, or ranks not laid out ``replica * num_shards + shard``."""
    params = [p for p in model.parameters() if is_sharded(p)]
    if not params:
        return None
    mesh = params[0].device_mesh
    if any(p.device_mesh != mesh for p in params):
        raise JitcError("cannot protect this model: its parameters are on several device "
                        "meshes (jitc supports one mesh for the whole model)")
    if mesh.size() != world_size:
        raise JitcError(f"cannot protect this model: its device mesh {tuple(mesh.shape)} has "
                        f"{mesh.size()} ranks, the job {world_size}")
    sizes = tuple(mesh.shape)
    sharded_dims = sorted({d for p in params for d, pl in enumerate(p.placements)
                           if pl.is_shard()})
    coordinate = tuple(mesh.get_coordinate())
    shard, num_shards = 0, 1
    for d in sharded_dims:
        shard, num_shards = shard * sizes[d] + coordinate[d], num_shards * sizes[d]
    replicas = math.prod(sizes) // num_shards
    replica = 0
    for d in (d for d in range(len(sizes)) if d not in sharded_dims):
        replica = replica * sizes[d] + coordinate[d]
    if rank != replica * num_shards + shard:
        raise JitcError(f"cannot protect this model: rank {rank} holds shard {shard} of copy "
                        f"{replica} in mesh {sizes}, jitc needs rank = copy * {num_shards} + "
                        "shard: put the replicate dimension first, "
                        "init_device_mesh(..., (replicas, shards))")
    return Layout(mesh, coordinate, shard, num_shards, replicas)


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules inside ``model`` that ``fully_shard`` made groups of (not the root)."""
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if m is not model and isinstance(m, FSDPModule)]


def placement_name(placement) -> str:
    from torch.distributed.tensor import Partial, Replicate, Shard
    if type(placement) is Shard:
        return f"S({placement.dim})"
    if isinstance(placement, Replicate):
        return "R"
    if isinstance(placement, Partial):
        return "P"
    raise JitcError(f"cannot protect a DTensor placed {placement!r}: jitc knows Replicate, "
                    "Shard and Partial")


def _placement(name: str):
    from torch.distributed.tensor import Partial, Replicate, Shard
    if name == "R":
        return Replicate()
    if name == "P":
        return Partial()
    if name.startswith("S(") and name.endswith(")") and name[2:-1].isdigit():
        return Shard(int(name[2:-1]))
    raise CorruptSnapshotError(f"unknown placement {name!r} in the sharding record")


def tensor_record(name: str, tensor: torch.Tensor) -> dict:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    placements = [placement_name(p) for p in tensor.placements]
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh,
                                                          tensor.placements)
    if tuple(shape) != tuple(tensor._local_tensor.shape):
        raise JitcError(f"cannot protect {name}: its local shard is "
                        f"{list(tensor._local_tensor.shape)}, torch's layout says {list(shape)}")
    return {"global_shape": list(tensor.shape), "placements": placements,
            "offset": list(offset), "local_shape": list(shape)}


def record(layout: Layout, items: Iterable) -> dict:
    """The meta ``sharding`` record of the registered ``items`` (StateTensors)."""
    names = layout.mesh.mesh_dim_names
    return {"mesh_shape": list(layout.mesh_shape),
            "mesh_dim_names": list(names) if names is not None else None,
            "coordinate": list(layout.coordinate), "shard": layout.shard,
            "num_shards": layout.num_shards,
            "tensors": {i.name: tensor_record(i.name, i.tensor) for i in items
                        if is_sharded(i.tensor)}}


def check(saved: dict | None, live: dict | None, path) -> None:
    """CorruptSnapshotError, one line, unless the snapshot's record ``saved`` was written
    by this rank's shard of the same mesh (``live``: this rank's record)."""
    if live is None:
        if saved is not None:
            raise CorruptSnapshotError(f"{path}: snapshot is of a sharded model (mesh "
                                       f"{saved.get('mesh_shape')}), this model is not sharded")
        return
    if type(saved) is not dict:
        raise CorruptSnapshotError(f"{path}: snapshot has no sharding record, this model is "
                                   f"sharded (mesh {live['mesh_shape']})")
    for key in ("mesh_shape", "num_shards", "shard"):
        if saved.get(key) != live[key]:
            raise CorruptSnapshotError(f"{path}: snapshot is of {key} {saved.get(key)}, this "
                                       f"rank has {live[key]}")
    tensors = saved.get("tensors") if type(saved.get("tensors")) is dict else {}
    for name, mine in live["tensors"].items():
        theirs = tensors.get(name)
        if type(theirs) is not dict:
            raise CorruptSnapshotError(f"{path}: {name} is sharded here, not in the snapshot")
        for key in ("local_shape", "global_shape", "placements"):
            if theirs.get(key) != mine[key]:
                raise CorruptSnapshotError(f"{path}: {name}: snapshot's {key} "
                                           f"{theirs.get(key)}, this rank's {mine[key]}")


def from_saved(saved: torch.Tensor, param: torch.Tensor, entry: dict, what: str) -> torch.Tensor:
    """Optimizer state that did not exist yet, as a DTensor on ``param``'s mesh, from the
    saved local tensor and its ``entry`` in the sharding record (``what`` names it in the
    CorruptSnapshotError when they disagree)."""
    from torch.distributed.tensor import DTensor
    if not is_sharded(param):
        raise CorruptSnapshotError(f"{what}: sharded in the snapshot, its parameter is not")
    if (type(entry) is not dict or entry.get("local_shape") != list(saved.shape)
            or len(entry.get("placements") or ()) != param.device_mesh.ndim):
        raise CorruptSnapshotError(f"{what}: the sharding record does not describe the saved "
                                   f"tensor {list(saved.shape)} on mesh "
                                   f"{list(param.device_mesh.shape)}")
    shape = torch.Size(entry["global_shape"])
    stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
    placements = tuple(_placement(p) for p in entry["placements"])
    return DTensor.from_local(saved.clone().to(local(param).device), param.device_mesh,
                              placements, run_check=False, shape=shape, stride=stride)
