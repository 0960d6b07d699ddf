"""Restoring a rank from a snapshot: which one, and how it goes back into live objects.

Parameters, buffers and optimizer state are copied into the user's own tensors (devices
kept); optimizer state that does not exist yet (Adam creates it lazily) is created from the
snapshot. Hyper-parameters, scheduler and user extras come from the meta record (plain
data, jitc/snapshot/meta.py).
RNG streams need nothing: they are a function of (seed, rank, step) (see rng.py).

Pipelines: with several stages the supervisor's snapshot is one complete snapshot per
stage, ``<snap>/shard-<s>/``; which one a rank of stage s loads is the layout's answer
(``layout.resume_manifest``: the index's entry for s). A stage rebuilt by CheckFree
(meta ``rebuilt``) has model tensors only: it resumes with a fresh optimizer state (the
hyper-parameters and the scheduler follow its neighbour's) and its learning rate scaled by
the recorded factor (checkfree/lr.py).

FSDP2/HSDP: the shards are laid out like stages (``shard-<s>/``, jitc/sharding.py), every
rank loads its own shard's local tensors; the snapshot's ``sharding`` record must be of
this rank's mesh and shard, with the same local shapes. Optimizer state created here is a
DTensor on the parameter's mesh, placed as the record says.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from . import ddp_buckets, env, sharding
from . import state as st
from .errors import CorruptSnapshotError, NoSnapshotError
from .snapshot import layout

log = logging.getLogger("jitc")


def choose(supervised: bool, stage: int = 0, num_stages: int = 1, rejected: list | None = None):
    """(manifest path, loaded snapshot) to resume from, or (None, None): JITC_RESUME (supervisor), else in shim-only mode the
    newest complete snapshot under JITC_DIR. A corrupt JITC_RESUME falls back to the newest
    older complete snapshot; if there is none, that is an error, never a fresh start.
    Shim-only, the candidates skipped go to ``rejected`` as ``(directory, reason)``."""
    from .snapshot import load, load_latest
    named = env.get(env.RESUME)
    root = env.get(env.DIR)
    snap = None
    if named:
        try:
            named = layout.resume_manifest(Path(named), stage, num_stages)
            return named, load(named)
        except CorruptSnapshotError as e:
            log.error("jitc: %s; looking for an older complete snapshot", e)
            # With several stages the newest snapshot under root may be another stage's.
            snap = load_latest(Path(root)) if root and num_stages <= 1 else None
            if snap is None:
                raise NoSnapshotError(f"cannot resume: {e}, and no older complete snapshot") from e
    elif not supervised and root and Path(root).is_dir():
        from .tmpfiles import sweep
        sweep(root)   # shim-only: the ranks own JITC_DIR; a killed writer's temporaries go
        # Newest first; one that does not verify, parse or load is skipped (and logged).
        snap = load_latest(Path(root), rejected)
        if snap is not None and num_stages > 1:
            raise NoSnapshotError(f"{snap.path}: shim-only resume of a job with several "
                                  "shards (pipeline stages, FSDP shards) is not supported: "
                                  "run it under `jitc supervise`")
    return (snap.path, snap) if snap is not None else (None, None)


def restore(session) -> tuple[int, Path | None]:
    """Load the chosen snapshot into the session's objects; (first step to run, path)."""
    rejected: list = []
    path, snap = choose(session.supervised, session.stage, session.num_stages, rejected)
    if not session.supervised and session.local_rank == 0:
        _say_where(path, snap, rejected, session.attempt)
    if path is None:
        return 0, None
    meta = snap.state          # decoded by the loader (snapshot/meta.py: never a pickle)
    # This rank's sharding record (FSDP2/HSDP), None for a model without DTensors.
    live_sharding = getattr(session, "sharding_record", None)
    saved_sharding = meta.get("sharding")
    sharding.check(saved_sharding, live_sharding, path)
    _check_same_model(session, snap, path)
    if live_sharding is None:      # several shards without a sharding record: stages
        _check_same_stage(session, meta, path)
    rebuilt = meta.get("rebuilt")
    with torch.no_grad():
        for item in st.model_tensors(session.model):
            item.local.copy_(snap.tensors[item.name])
        # A rebuilt stage's snapshot holds no optimizer tensors: the state stays fresh.
        _restore_optimizer(session.optimizer, {} if rebuilt else snap.tensors, meta.get("optim"),
                           (saved_sharding or {}).get("tensors") or {}, path)
    if session.scheduler is not None and meta.get("scheduler") is not None:
        session.scheduler.load_state_dict(meta["scheduler"])
    for name, obj in session.extra_state.items():
        if name in meta.get("extra", {}):
            obj.load_state_dict(meta["extra"][name])
    session._recorded.update(meta.get("record") or {})
    if getattr(session, "_buckets", None) is not None:   # a DDP: see ddp_buckets.py
        session._buckets.saved = meta.get(ddp_buckets.META_KEY)
    if rebuilt:
        from .checkfree.lr import LrRule
        LrRule(float(rebuilt["lr_factor"])).apply(session.optimizer, session.scheduler)
        log.warning("jitc: stage %d rebuilt by %s from stages %s: fresh optimizer state, "
                    "learning rate x%s", session.stage, rebuilt.get("method"),
                    rebuilt.get("sources"), rebuilt["lr_factor"])
    return snap.step, path


def _say_where(path, snap, rejected: list, attempt: int) -> None:
    """Shim-only, local rank 0: one stderr line saying where the run starts (no supervisor
    logs it). A first attempt with nothing in JITC_DIR starts at 0 without a word."""
    skipped = "; ".join(f"{d.name}: {why}" for d, why in rejected)
    if path is not None:
        # I1: the snapshot holds the state after `step` steps, and a healthy rank saves the
        # step it was stuck in, so at most that one step runs again.
        line = (f"resumed from step {snap.step} ({path}): steps before {snap.step} are not "
                f"run again, at most 1 is replayed")
        if skipped:
            line += f"; skipped newer: {skipped}"
    elif rejected or attempt > 0:
        root = env.get(env.DIR)
        line = (f"no usable snapshot in {root}: starting at step 0 ("
                + (f"rejected: {skipped})" if skipped else "none was written)"))
    else:
        return
    print(f"jitc: {line}", file=sys.stderr, flush=True)


def _check_same_stage(session, meta: dict, path: Path) -> None:
    stage = (meta.get("pipeline") or {}).get("stage", 0)
    if session.num_stages > 1 and stage != session.stage:
        raise CorruptSnapshotError(f"{path}: snapshot is of stage {stage}, this rank runs "
                                   f"stage {session.stage}")


def _check_same_model(session, snap, path: Path) -> None:
    expected = {i.name: i.local for i in st.model_tensors(session.model)}
    have = {k for k in snap.tensors if k.startswith("model.")}
    missing, unexpected = sorted(set(expected) - have), sorted(have - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CorruptSnapshotError(f"{path}: snapshot is from another model ({what})")
    for name, tensor in expected.items():
        saved = snap.tensors[name]
        if saved.shape != tensor.shape or saved.dtype != tensor.dtype:
            raise CorruptSnapshotError(
                f"{path}: snapshot is from another model ({name}: saved {saved.dtype}"
                f"{list(saved.shape)}, model has {tensor.dtype}{list(tensor.shape)})")


def _restore_optimizer(optimizer, tensors: dict, scalars: dict | None, placed: dict,
                       path: Path) -> None:
    """``placed``: the sharding record's entries (name -> placement) of DTensor state."""
    params = st.optimizer_params(optimizer)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, saved in tensors.items():
        if not name.startswith("optim."):
            continue
        _, index, key = name.split(".", 2)
        param = params[int(index)]
        state = optimizer.state[param]
        if key in state and isinstance(state[key], torch.Tensor):
            sharding.local(state[key]).copy_(saved)
            continue
        if name in placed:
            state[key] = sharding.from_saved(saved, param, placed[name], f"{path}: {name}")
            continue
        group = group_of[id(param)]
        # torch keeps Adam's "step" on the CPU unless the optimizer is capturable or fused.
        on_cpu = key == "step" and not (group.get("capturable") or group.get("fused"))
        state[key] = saved.clone().to("cpu" if on_cpu else param.device)
    if scalars:
        for group, saved in zip(optimizer.param_groups, scalars.get("param_groups", [])):
            group.update(saved)
        for index, extra in scalars.get("per_param", {}).items():
            optimizer.state[params[int(index)]].update(extra)
