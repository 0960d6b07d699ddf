"""Rebuild a lost pipeline stage from its neighbours (CheckFree, CheckFree+).

Why this exists: when every replica of a pipeline stage is lost, the only state left
that resembles it is held by the stages on either side. CheckFree rebuilds an
intermediate stage s as the average of stages s-1 and s+1 weighted by each
neighbour's gradient L2 norm from the last completed step:

    W_s = (w_prev * W_prev + w_next * W_next) / (w_prev + w_next)

CheckFree+ trains the edge stages to stand in for their neighbour (see schedule.py),
so a lost first/last stage is restored by copying the neighbour.

States are stage-local ``state_dict()``s. Entries are matched by *position inside
the stage* (the order of the state dict), never by absolute layer index: a stage
built from ``model.layers[4:8]`` that kept names like ``layers.4.attn.wq.weight``
still lines up with one named ``layers.0.attn.wq.weight``. To catch stages that are
not alike, each pair must agree on shape, dtype and on its name with every integer
component masked out.

WARNING: the norms must be the neighbours' gradient norms *before* clipping. Norms
taken after ``clip_grad_norm_(…, 1.0)`` are all 1.0 in practice and the rule
collapses to a plain average (a defect of the public reference code). Use
gradnorm.GradNormRecorder, which records before clipping.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from ..errors import RecoveryError

StateDict = Mapping[str, torch.Tensor]

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def _shape_of_name(name: str) -> str:
    """``layers.7.attn.wq.weight`` -> ``layers.#.attn.wq.weight``: the layer index masked."""
    return _INDEX.sub("#", name)


def _entries(state: StateDict, skip: Sequence[str]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not any(k.startswith(p) for p in skip)]


def align(prev_state: StateDict, next_state: StateDict, *,
          skip: Sequence[str] = ()) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Pair the entries of two alike stages by position: ``[(prev_name, prev, next)]``.

    ``skip`` lists name prefixes to leave out on both sides (e.g. ``("embed.",)`` when
    one neighbour also holds the embedding). Raises RecoveryError naming the first
    entry where the stages differ in count, layout, shape or dtype.
    """
    a, b = _entries(prev_state, skip), _entries(next_state, skip)
    if len(a) != len(b):
        raise RecoveryError(
            f"stages are not alike: {len(a)} entries vs {len(b)} "
            f"(first names {[k for k, _ in a[:3]]} vs {[k for k, _ in b[:3]]})")
    pairs = []
    for i, ((ka, va), (kb, vb)) in enumerate(zip(a, b)):
        if _shape_of_name(ka) != _shape_of_name(kb):
            raise RecoveryError(f"stages are not alike: entry {i} is {ka!r} in one and {kb!r} in the other")
        if va.shape != vb.shape or va.dtype != vb.dtype:
            raise RecoveryError(
                f"stages are not alike: entry {i} ({ka!r}) is {tuple(va.shape)}/{va.dtype} "
                f"vs {tuple(vb.shape)}/{vb.dtype}")
        pairs.append((ka, va, vb))
    return pairs


def merge_weights(prev_grad_norm: float, next_grad_norm: float) -> tuple[float, float]:
    """The two normalised weights of the CheckFree rule.

    Both norms zero (no signal at all, e.g. a stage that received no gradient) gives
    equal weights; a negative or non-finite norm is an error, never silently fixed.
    """
    for label, w in (("prev", prev_grad_norm), ("next", next_grad_norm)):
        if not math.isfinite(w) or w < 0:
            raise RecoveryError(f"{label} gradient norm is {w!r}: need a finite value >= 0")
    total = prev_grad_norm + next_grad_norm
    if total == 0:
        return 0.5, 0.5
    return prev_grad_norm / total, next_grad_norm / total


def rebuild_stage(prev_state: StateDict, next_state: StateDict,
                  prev_grad_norm: float, next_grad_norm: float, *,
                  skip: Sequence[str] = (), names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """CheckFree: the lost intermediate stage as a gradient-norm-weighted average.

    Returns a new state dict (fresh tensors; the neighbours are not modified) whose
    names are ``names`` if given (the lost stage's own names, in order) else the
    previous stage's. Floating entries are averaged in float64 and cast back; integer
    entries (counters, buffers) are taken from the previous stage.
    """
    pairs = align(prev_state, next_state, skip=skip)
    out_names = [k for k, _, _ in pairs] if names is None else list(names)
    if len(out_names) != len(pairs):
        raise RecoveryError(f"{len(out_names)} names given for {len(pairs)} merged entries")
    wp, wn = merge_weights(float(prev_grad_norm), float(next_grad_norm))
    out: dict[str, torch.Tensor] = {}
    for name, (_, a, b) in zip(out_names, pairs):
        if a.is_floating_point():
            merged = a.detach().double() * wp + b.detach().to(a.device).double() * wn
            out[name] = merged.to(a.dtype)
        else:
            out[name] = a.detach().clone()
    return out


def rebuild_edge_stage(neighbour_state: StateDict, *, skip: Sequence[str] = (),
                       names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """CheckFree+: a lost first/last stage restored as a copy of its neighbour.

    Only sound when the run used the swap schedule (schedule.py), which trains the
    neighbour to do the edge stage's job. ``skip``/``names`` as in rebuild_stage.
    """
    entries = _entries(neighbour_state, skip)
    out_names = [k for k, _ in entries] if names is None else list(names)
    if len(out_names) != len(entries):
        raise RecoveryError(f"{len(out_names)} names given for {len(entries)} copied entries")
    return {n: v.detach().clone() for n, (_, v) in zip(out_names, entries)}
