"""Per-stage recovery of a pipeline: which stages are snapshotted, which are rebuilt.

Why this exists: recovery.py snapshots every shard (pipeline stage) that still has a
healthy replica. A stage with none cannot be snapshotted; this module decides what to
do instead (jitc.checkfree.plan_recovery, in its order of preference) and, once the
survivors' snapshots are published, builds the lost stage from its neighbours'
snapshots and publishes it as an ordinary snapshot in its own shard directory.

The resume step (invariant I1: every stage resumes at the same step). Healthy ranks
hold step i or i+1. The step chosen is the largest one at which *every surviving*
stage has a usable replica; the rebuilt stage is built from its neighbours' state at
that very step, with the grad norms they recorded for their last completed step. When
the surviving stages share no step (one finished step i, another did not), no
consistent state exists: the job falls back to the periodic safety net or stops. A
stage is never rebuilt from neighbours at different steps.

WARNING: the merge runs in the supervisor's event loop and reads both neighbours'
snapshots; that is quick for models up to a few GB, but the loop does nothing else
meanwhile (the job is stopped then anyway).

torch comes in with jitc.checkfree and jitc.snapshot: they are imported on first use
(loop.py warms jitc.snapshot up in the background), never when the supervisor starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import private
from ..errors import JitcError, RecoveryError

if TYPE_CHECKING:
    from ..checkfree import StageAction
    from ..checkfree.layout import StageLayout
    from ..checkfree.rebuild import Rebuilt

MANIFEST = "manifest.json"
# Action value -> the ``method`` of the stage_rebuilt event.
METHOD = {"checkfree_merge": "checkfree", "checkfree_plus_copy": "checkfree+",
          "copy_replica": "replica"}
REBUILT = ("checkfree_merge", "checkfree_plus_copy")


@dataclass(frozen=True)
class StagePlan:
    """What recovery does per stage. ``reason`` set: no JIT resume point (fall back)."""

    step: int | None
    actions: tuple[StageAction, ...] = ()
    reason: str | None = None

    @property
    def rebuilt(self) -> list["StageAction"]:
        return [a for a in self.actions if a.action.value in REBUILT]


def plan_stages(by_shard: dict[int, dict[int, list[int]]], replicas: dict[int, int],
                root: Path) -> StagePlan:
    """Choose the step and each stage's action from the usable replicas per stage and step."""
    from ..checkfree.layout import any_checkfree_plus
    from ..checkfree.plan import Action, StageStatus, plan_recovery
    surviving = {s: steps for s, steps in by_shard.items() if steps}
    if not surviving:
        return StagePlan(None, reason="no usable replica of any stage")
    common = set.intersection(*(set(steps) for steps in surviving.values()))
    if not common:
        held = ", ".join(f"stage {s} at {sorted(steps)}" for s, steps in sorted(surviving.items()))
        return StagePlan(None, reason=f"the surviving stages hold different steps ({held})")
    step = max(common)
    statuses = [StageStatus(s, max(replicas.get(s, 1), 1), len(by_shard[s].get(step, [])))
                for s in sorted(by_shard)]
    actions = plan_recovery(statuses, any_checkfree_plus(root), have_periodic=True)
    bad = [a for a in actions if a.action in (Action.PERIODIC, Action.ERROR)]
    if bad:
        return StagePlan(step, tuple(actions), reason=bad[0].message)
    return StagePlan(step, tuple(actions))


def _neighbour(base: Path, root: Path, stage: int):
    """A neighbour's published snapshot and meta, its model tensors in the stage's own
    order (its layout record): the merge pairs entries by position."""
    from ..checkfree.layout import read_layout
    from ..snapshot import load
    snap = load(base / f"shard-{stage}" / MANIFEST)
    meta = snap.state          # decoded by the loader (snapshot/meta.py: never a pickle)
    order = [n for n, _, _ in read_layout(root, stage).tensors]
    missing = [n for n in order if n not in snap.tensors]
    if missing:
        raise RecoveryError(f"stage {stage}'s snapshot lacks {missing[0]!r} of its layout")
    return {n: snap.tensors[n] for n in order}, snap.step, meta


def _rebuilt_meta(source_meta: dict, layout: "StageLayout", action: "StageAction",
                  result: "Rebuilt", step: int) -> bytes:
    from ..checkfree.lr import DEFAULT_LR_FACTOR
    groups = (source_meta.get("optim") or {}).get("param_groups", [])
    meta = {**source_meta, "completed": step,
            "optim": {"param_groups": groups, "per_param": {}},
            "pipeline": {"stage": layout.stage, "num_stages": layout.num_stages,
                         "checkfree_plus": layout.checkfree_plus},
            "record": {},
            "rebuilt": {"method": METHOD[action.action.value], "sources": list(action.sources),
                        "weights": list(result.weights), "norms": list(result.norms),
                        "lr_factor": DEFAULT_LR_FACTOR}}
    from ..snapshot.meta import encode
    return encode(meta)


def rebuild_stage(action: "StageAction", base: Path, root: Path, step: int,
                  world_size: int | None) -> tuple[Path, "Rebuilt"]:
    """Build ``action.stage`` from its neighbours' published snapshots in ``base``; write
    and publish it as ``base/shard-<stage>``. RecoveryError (one line) if it cannot."""
    from ..checkfree.layout import read_layout
    from ..checkfree.plan import Action
    from ..checkfree.rebuild import copy_neighbour, merge_neighbours
    from ..checkfree.writer import write_snapshot
    layout = read_layout(root, action.stage)
    sources = [_neighbour(base, root, s) for s in action.sources]
    for (_, got, _), s in zip(sources, action.sources):
        if got != step:
            raise RecoveryError(f"stage {s}'s snapshot is of step {got}, not {step}")
    if action.action is Action.CHECKFREE_MERGE:
        (prev, _, prev_meta), (nxt, _, next_meta) = sources
        norm = lambda m: (m.get("record") or {}).get("grad_norm")  # noqa: E731
        result = merge_neighbours(layout, prev, nxt, norm(prev_meta), norm(next_meta))
    else:
        result = copy_neighbour(layout, sources[0][0])
    meta = _rebuilt_meta(sources[0][2], layout, action, result, step)
    manifest = write_snapshot(base / f"shard-{action.stage}", step, result.tensors, meta,
                              world_size=world_size)
    return manifest, result


def latest_complete_stages(root: Path, num_stages: int) -> Path | None:
    """Shard 0's manifest of the newest snapshot every stage has, verified; or None.

    Candidates: supervisor snapshots (``snap-*/shard-<s>/``) and periodic ones, which
    each stage writes on its own (``snap-p*-s<step>-shard<s>/``). A complete periodic set
    is assembled into the supervisor's layout with hard links (no copy, same checksums).
    """
    from ..snapshot.verify import verify_manifest

    def ok(manifest: Path) -> int | None:
        try:
            return verify_manifest(manifest)["step"]
        except (JitcError, OSError):
            return None

    found: list[tuple[int, int, Path | dict[int, Path]]] = []
    for d in root.glob("snap-*"):
        if (d / "shard-0").is_dir():
            steps = {ok(d / f"shard-{s}" / MANIFEST) for s in range(num_stages)}
            if len(steps) == 1 and None not in steps:
                found.append((steps.pop(), 1, d / "shard-0" / MANIFEST))
    periodic: dict[int, dict[int, Path]] = {}
    for d in root.glob("snap-p*-s*-shard*"):
        stage = d.name.rsplit("-shard", 1)[1]
        step = ok(d / MANIFEST) if stage.isdigit() else None
        if step is not None:
            periodic.setdefault(step, {})[int(stage)] = d
    for step, dirs in periodic.items():
        if set(dirs) >= set(range(num_stages)):
            found.append((step, 0, dirs))
    if not found:
        return None
    step, _, where = max(found, key=lambda f: (f[0], f[1]))
    if isinstance(where, Path):
        return where
    base = root / f"snap-p-s{step}-stages"
    for s in range(num_stages):
        target = base / f"shard-{s}"
        private.make_dirs(target)
        for f in where[s].iterdir():
            if not f.name.startswith(".") and not (target / f.name).exists():
                os.link(f, target / f.name)
    return base / "shard-0" / MANIFEST
