"""The disk side of a pipeline's recovery: rebuilding a lost stage, finding a complete
older snapshot of every stage. Which stage gets which method is decided in
planner/methods.py; these run as the planner's work (work.py), off the supervisor's loop.

A lost stage is built from its neighbours' state at the resume step itself, with the grad
norms they recorded for their last completed step, and published as an ordinary snapshot
in its own shard directory (written by the native engine, checkfree/writer.py). A stage
is never rebuilt from neighbours at different steps.

torch comes in with jitc.checkfree and jitc.snapshot: they are imported on first use
(loop.py warms jitc.snapshot up in the background), never when the supervisor starts.
"""
from __future__ import annotations

import os

from pathlib import Path
from typing import TYPE_CHECKING

from .. import private
from ..errors import JitcError, RecoveryError
from ..snapshot import layout
from .planner.methods import METHODS

if TYPE_CHECKING:
    from ..checkfree import StageAction
    from ..checkfree.layout import StageLayout
    from ..checkfree.rebuild import Rebuilt

def _neighbour(base: Path, root: Path, stage: int):
    """A neighbour's published snapshot and meta, its model tensors in the stage's own
    order (its layout record): the merge pairs entries by position."""
    from ..checkfree.layout import read_layout
    from ..snapshot import load
    snap = load(layout.manifest_path(layout.shard_dir(base, stage, 2)))
    meta = snap.state          # decoded by the loader (snapshot/meta.py: never a pickle)
    order = [n for n, _, _ in read_layout(root, stage).tensors]
    missing = [n for n in order if n not in snap.tensors]
    if missing:
        raise RecoveryError(f"stage {stage}'s snapshot lacks {missing[0]!r} of its layout")
    return {n: snap.tensors[n] for n in order}, snap.step, meta


def _rebuilt_meta(source_meta: dict, stage_layout: "StageLayout", action: "StageAction",
                  result: "Rebuilt", step: int) -> bytes:
    from ..checkfree.lr import DEFAULT_LR_FACTOR
    groups = (source_meta.get("optim") or {}).get("param_groups", [])
    meta = {**source_meta, "completed": step,
            "optim": {"param_groups": groups, "per_param": {}},
            "pipeline": {"stage": stage_layout.stage, "num_stages": stage_layout.num_stages,
                         "checkfree_plus": stage_layout.checkfree_plus},
            "record": {},
            "rebuilt": {"method": METHODS[action.action].name, "sources": list(action.sources),
                        "weights": list(result.weights), "norms": list(result.norms),
                        "lr_factor": DEFAULT_LR_FACTOR}}
    from ..snapshot.meta import encode
    return encode(meta)


def rebuild_stage(action: "StageAction", base: Path, root: Path, step: int,
                  world_size: int | None) -> tuple[Path, "Rebuilt"]:
    """Build ``action.stage`` from its neighbours' published snapshots in ``base``; write
    and publish it in its shard directory. RecoveryError (one line) if it cannot."""
    from ..checkfree.layout import read_layout
    from ..checkfree.plan import Action
    from ..checkfree.rebuild import copy_neighbour, merge_neighbours
    from ..checkfree.writer import write_snapshot
    stage_layout = read_layout(root, action.stage)
    sources = [_neighbour(base, root, s) for s in action.sources]
    for (_, got, _), s in zip(sources, action.sources):
        if got != step:
            raise RecoveryError(f"stage {s}'s snapshot is of step {got}, not {step}")
    if action.action is Action.CHECKFREE_MERGE:
        (prev, _, prev_meta), (nxt, _, next_meta) = sources
        norm = lambda m: (m.get("record") or {}).get("grad_norm")  # noqa: E731
        result = merge_neighbours(stage_layout, prev, nxt, norm(prev_meta), norm(next_meta))
    else:
        result = copy_neighbour(stage_layout, sources[0][0])
    meta = _rebuilt_meta(sources[0][2], stage_layout, action, result, step)
    manifest = write_snapshot(layout.shard_dir(base, action.stage, 2), step, result.tensors, meta,
                              world_size=world_size, root=root)
    return manifest, result


def latest_complete_stages(root: Path, num_stages: int) -> Path | None:
    """The index of the newest snapshot every stage has, each stage verified; or None.

    Candidates: supervisor snapshots (one shard directory per stage) and periodic ones,
    which each stage writes on its own (layout.periodic_dir). A complete periodic set is
    assembled into the supervisor's layout with hard links (no copy, same checksums).
    """
    from ..snapshot.verify import verify_manifest

    def ok(manifest: Path) -> int | None:
        try:
            return verify_manifest(manifest)["step"]
        except (JitcError, OSError):
            return None

    def manifests(snap: Path) -> dict[int, Path]:
        return {s: layout.manifest_path(layout.shard_dir(snap, s, num_stages))
                for s in range(num_stages)}

    found: list[tuple[int, int, Path | dict[int, Path]]] = []
    periodic: dict[int, dict[int, Path]] = {}
    for d in layout.snapshot_dirs(root):
        named = layout.parse_periodic(d.name)
        if named is not None:
            step = ok(layout.manifest_path(d))
            if step is not None:
                periodic.setdefault(step, {})[named[2]] = d
        elif layout.shard_dir(d, 0, num_stages).is_dir():
            steps = {ok(m) for m in manifests(d).values()}
            if len(steps) == 1 and None not in steps:
                found.append((steps.pop(), 1, d))
    for step, dirs in periodic.items():
        if set(dirs) >= set(range(num_stages)):
            found.append((step, 0, dirs))
    if not found:
        return None
    step, _, where = max(found, key=lambda f: (f[0], f[1]))
    if isinstance(where, Path):
        base = where
    else:
        base = layout.assembled_dir(root, step)
        for s in range(num_stages):
            target = layout.shard_dir(base, s, num_stages)
            private.make_dirs(target)
            for f in where[s].iterdir():
                if not f.name.startswith(".") and not (target / f.name).exists():
                    os.link(f, target / f.name)
    index = base / layout.INDEX
    try:
        if index.exists() and layout.read_index(index) == manifests(base):
            return index
    except JitcError:
        pass      # a bad index is replaced by the one the verified shards give
    return layout.write_index(base, manifests(base), None)
