"""Sharded snapshot -> global tensors: the shards' local pieces put back together.

Why this exists: an FSDP2/HSDP snapshot holds, per shard, each DTensor's *local* piece
and the meta ``sharding`` record saying where it lies in the global tensor (jitc/sharding.py
writes it: ``global_shape``, ``placements``, ``offset``, ``local_shape``). Whoever needs the
model whole (``jitc export-dcp``) asks this module, which trusts no record on its word: the
shards must be 0..S-1 once each, of one step and one mesh, registering the same names; each
name's distinct pieces must cover its global shape exactly once, and a piece several shards
hold must be equal in each. Names outside the record are plain tensors, the same in every
shard: shard 0's is kept, as DCP's own save keeps rank 0's.

WARNING: every global tensor is built in this process's memory.
"""
from __future__ import annotations

import math
import re
from itertools import combinations
from typing import Any

import torch

from ..errors import CorruptSnapshotError, JitcError
from .layout import INDEX
from .loader import LoadedSnapshot

_PLACEMENT = re.compile(r"^(R|P|S\((0|[1-9][0-9]*)\))$")


def assemble(shards: list[LoadedSnapshot], listed: list[int] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict, int]:
    """(global tensors by registered name, the meta record, the step) of loaded shards;
    ``listed``: the shard number an index gave each, checked against its record.
    CorruptSnapshotError when the shards do not fit together, JitcError for a snapshot
    that is not one model (pipeline stages) or holds a Partial placement."""
    first = shards[0]
    pipeline = first.state.get("pipeline")
    if isinstance(pipeline, dict) and pipeline.get("num_stages", 1) != 1:
        raise JitcError(f"{first.path}: a pipeline stage's snapshot: each stage is its own "
                        "model, which export-dcp does not merge")
    sharded = [s for s in shards if "sharding" in s.state]
    if not sharded:
        if len(shards) > 1:
            raise JitcError(f"{first.path}: {len(shards)} shards without sharding records: "
                            "cannot tell how they fit together")
        return dict(first.tensors), first.state, first.step
    if len(sharded) != len(shards):
        odd = next(s for s in shards if "sharding" not in s.state)
        raise CorruptSnapshotError(f"{odd.path}: no sharding record, the other shards have one")
    by_shard = _check_shards(shards, listed)
    base = by_shard[0]
    tensors = {}
    for name, t in base.tensors.items():
        if name in base.state["sharding"]["tensors"]:
            tensors[name] = _global(name, by_shard)
        else:   # plain: every shard holds it; shard 0's is kept, as DCP's save keeps rank 0's
            tensors[name] = t
    return tensors, base.state, base.step


def _check_shards(shards: list[LoadedSnapshot],
                  listed: list[int] | None) -> dict[int, LoadedSnapshot]:
    """The shards by their sharding record's number, once each of 0..S-1, agreeing on
    the step, the mesh and what they registered."""
    first = shards[0]
    rec0 = first.state["sharding"]
    by_shard: dict[int, LoadedSnapshot] = {}
    for i, s in enumerate(shards):
        rec = _record(s)
        if listed is not None and listed[i] != rec["shard"]:
            raise CorruptSnapshotError(f"{s.path}: the index lists it as shard {listed[i]}, "
                                       f"its sharding record says {rec['shard']}")
        for key in ("num_shards", "mesh_shape"):
            if rec[key] != rec0[key]:
                raise CorruptSnapshotError(f"{s.path}: {key} {rec[key]}, shard of "
                                           f"{first.path} says {rec0[key]}")
        if s.step != first.step:
            raise CorruptSnapshotError(f"{s.path}: step {s.step}, {first.path} is of step "
                                       f"{first.step}: shards of different steps")
        if rec["shard"] in by_shard:
            raise CorruptSnapshotError(f"{s.path}: shard {rec['shard']} again (also "
                                       f"{by_shard[rec['shard']].path})")
        _same_registry(first, s)
        by_shard[rec["shard"]] = s
    missing = sorted(set(range(rec0["num_shards"])) - set(by_shard))
    if missing:
        raise CorruptSnapshotError(f"{first.path}: shard {missing[0]} of {rec0['num_shards']} "
                                   f"missing (name the snapshot's index, {INDEX})")
    return by_shard


def _record(s: LoadedSnapshot) -> dict:
    rec = s.state["sharding"]
    ok = (isinstance(rec, dict) and type(rec.get("num_shards")) is int
          and type(rec.get("shard")) is int and 0 <= rec["shard"] < rec["num_shards"]
          and isinstance(rec.get("mesh_shape"), list) and isinstance(rec.get("tensors"), dict))
    if not ok:
        raise CorruptSnapshotError(f"{s.path}: malformed sharding record")
    unknown = [n for n in rec["tensors"] if n not in s.tensors]
    if unknown:
        raise CorruptSnapshotError(f"{s.path}: sharding record names {unknown[0]!r}, which "
                                   "the shard does not hold")
    return rec


def _same_registry(a: LoadedSnapshot, b: LoadedSnapshot) -> None:
    if list(a.tensors) != list(b.tensors):
        diff = sorted(set(a.tensors) ^ set(b.tensors)) or ["(the order)"]
        raise CorruptSnapshotError(f"{b.path}: holds other tensors than {a.path}: {diff[0]}")
    sa, sb = a.state["sharding"]["tensors"], b.state["sharding"]["tensors"]
    for name, t in a.tensors.items():
        u = b.tensors[name]
        if (name in sa) != (name in sb) or t.dtype != u.dtype or (
                name not in sa and t.shape != u.shape):
            raise CorruptSnapshotError(f"{b.path}: {name!r} differs from {a.path} "
                                       f"({u.dtype} {list(u.shape)}, there {t.dtype} "
                                       f"{list(t.shape)}, sharded: {name in sb}/{name in sa})")


def _global(name: str, by_shard: dict[int, LoadedSnapshot]) -> torch.Tensor:
    """The global tensor ``name``, each shard's piece placed at its offset; the distinct
    pieces must cover it exactly once (pieces repeated by several shards must be equal)."""
    pieces: dict[tuple, tuple[int, torch.Tensor]] = {}
    shape0 = None
    for s, snap in sorted(by_shard.items()):
        where = f"{snap.path}: {name!r}"
        info, local = snap.state["sharding"]["tensors"][name], snap.tensors[name]
        shape, offset = _placed(where, info, local, len(snap.state["sharding"]["mesh_shape"]))
        if shape0 is not None and shape != shape0:
            raise CorruptSnapshotError(f"{where}: global shape {list(shape)}, shard 0 says "
                                       f"{list(shape0)}")
        shape0 = shape
        key = (offset, tuple(local.shape))
        if key in pieces:
            if not _same_bytes(pieces[key][1], local):
                raise CorruptSnapshotError(f"{where}: shards {pieces[key][0]} and {s} hold "
                                           f"different values for the piece at {list(offset)}")
            continue
        pieces[key] = (s, local)
    boxes = [(off, shp, s) for (off, shp), (s, _) in pieces.items() if math.prod(shp)]
    for (oa, sa, a), (ob, sb, b) in combinations(boxes, 2):
        if all(x < y + m and y < x + n for x, n, y, m in zip(oa, sa, ob, sb)):
            raise CorruptSnapshotError(f"{name!r}: the pieces of shards {a} and {b} overlap "
                                       f"(at {list(oa)} and {list(ob)})")
    covered = sum(math.prod(shp) for _, shp, _ in boxes)
    if covered != math.prod(shape0):
        raise CorruptSnapshotError(f"{name!r}: the shards' pieces cover {covered} of its "
                                   f"{math.prod(shape0)} elements {list(shape0)}")
    full = torch.empty(shape0, dtype=next(iter(pieces.values()))[1].dtype)
    for (off, shp), (_, local) in pieces.items():
        full[tuple(slice(o, o + n) for o, n in zip(off, shp))] = local
    return full


def _placed(where: str, info: Any, local: torch.Tensor, mesh_dims: int) -> tuple[tuple, tuple]:
    """(global shape, offset) of one local piece, after checking its sharding entry."""
    try:
        shape, offset = tuple(info["global_shape"]), tuple(info["offset"])
        local_shape, placements = tuple(info["local_shape"]), list(info["placements"])
    except (TypeError, KeyError) as e:
        raise CorruptSnapshotError(f"{where}: malformed sharding entry ({e})") from None
    ints = all(type(x) is int and x >= 0 for x in shape + offset + local_shape)
    if not (ints and len(shape) == len(offset) == len(local_shape) == local.dim()):
        raise CorruptSnapshotError(f"{where}: sharding entry does not fit a {local.dim()}-d "
                                   f"piece: {info}")
    if local_shape != tuple(local.shape):
        raise CorruptSnapshotError(f"{where}: the piece is {list(local.shape)}, its sharding "
                                   f"entry says {list(local_shape)}")
    if any(o + n > g for o, n, g in zip(offset, local_shape, shape)):
        raise CorruptSnapshotError(f"{where}: piece {list(local_shape)} at {list(offset)} "
                                   f"lies outside {list(shape)}")
    if len(placements) != mesh_dims or not all(
            type(p) is str and _PLACEMENT.match(p) for p in placements):
        raise CorruptSnapshotError(f"{where}: bad placements {placements} for a "
                                   f"{mesh_dims}-d mesh")
    if "P" in placements:
        raise JitcError(f"{where}: a Partial placement (a pending reduction) cannot be "
                        "exported as a value")
    return shape, offset


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
