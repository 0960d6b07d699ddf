"""The lost stage's tensors, built from its neighbours' snapshots (pure, no I/O).

Why this exists: merge.py works on two alike state dicts; a real pipeline's stages are
alike only in their bodies. An edge neighbour also holds the embedding or the output
head, and with CheckFree+ an intermediate stage holds a replica of one of them. This
module maps the lost stage's own layout (layout.py) onto what the neighbours hold:

* an entry both neighbours have (same name with layer indices masked, same shape and
  dtype) is a *body* entry: the body entries of the three stages are paired by position
  and merged with the CheckFree weights (merge.rebuild_stage);
* an entry only one neighbour has is a replicated edge layer (embedding/head, kept
  identical on its holders by the training script): copied from that neighbour;
* CheckFree+ copy (a lost first/last stage): every entry is copied from the one
  neighbour, position by position (merge.rebuild_edge_stage);
* anything else is an error naming the entry; nothing is invented.

Only ``model.*`` entries are rebuilt: a rebuilt stage starts with a fresh optimizer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import RecoveryError
from .layout import StageLayout
from .merge import _shape_of_name, merge_weights, rebuild_edge_stage, rebuild_stage

MODEL_PREFIX = "model."


@dataclass(frozen=True)
class Rebuilt:
    tensors: dict[str, torch.Tensor]      # the lost stage's model tensors, layout order
    weights: tuple[float, ...]            # per source stage (1.0 for a copy)
    norms: tuple[float | None, ...]       # the recorded grad norms the weights came from


def _model(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def _check_against(layout: StageLayout, tensors: Mapping[str, torch.Tensor]) -> None:
    for name, dtype, shape in layout.tensors:
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise RecoveryError(f"stage {layout.stage}: rebuilt {name!r} has shape "
                                f"{tuple(t.shape)}, the stage needs {shape}")


def merge_neighbours(layout: StageLayout, prev: Mapping[str, torch.Tensor],
                     nxt: Mapping[str, torch.Tensor], prev_norm: float | None,
                     next_norm: float | None) -> Rebuilt:
    """CheckFree: body entries merged by grad-norm weights, replicated edge entries copied.

    A neighbour with no recorded norm (it failed before completing a step after a
    restart) gives equal weights; the returned ``norms`` show it as None.
    """
    prev, nxt = _model(prev), _model(nxt)
    masked_prev = {_shape_of_name(k) for k in prev}
    masked_next = {_shape_of_name(k) for k in nxt}
    body_names, copies = [], {}
    for name, _dtype, _shape in layout.tensors:
        m = _shape_of_name(name)
        if m in masked_prev and m in masked_next:
            body_names.append(name)
        elif m in masked_prev or m in masked_next:
            src = prev if m in masked_prev else nxt
            matches = [k for k in src if _shape_of_name(k) == m]
            if len(matches) != 1:
                raise RecoveryError(f"stage {layout.stage}: {name!r} matches {len(matches)} "
                                    "entries of its neighbour, need exactly one to copy")
            copies[name] = src[matches[0]].detach().clone()
        else:
            raise RecoveryError(f"stage {layout.stage}: no neighbour holds {name!r}")
    body = {_shape_of_name(n) for n in body_names}
    skip_prev = [k for k in prev if _shape_of_name(k) not in body]
    skip_next = [k for k in nxt if _shape_of_name(k) not in body]
    prev_body = {k: v for k, v in prev.items() if k not in skip_prev}
    next_body = {k: v for k, v in nxt.items() if k not in skip_next}
    if prev_norm is None or next_norm is None:
        wp = wn = 1.0
    else:
        wp, wn = float(prev_norm), float(next_norm)
    merged = rebuild_stage(prev_body, next_body, wp, wn, names=body_names)
    out = {**merged, **copies}
    out = {name: out[name] for name, _, _ in layout.tensors}
    _check_against(layout, out)
    return Rebuilt(out, merge_weights(wp, wn), (prev_norm, next_norm))


def copy_neighbour(layout: StageLayout, neighbour: Mapping[str, torch.Tensor]) -> Rebuilt:
    """CheckFree+: a lost edge stage restored as its neighbour, entry by entry."""
    names = [n for n, _, _ in layout.tensors]
    out = rebuild_edge_stage(_model(neighbour), names=names)
    _check_against(layout, out)
    return Rebuilt(out, (1.0,), (None,))
