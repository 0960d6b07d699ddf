"""Cheap per-stage gradient-norm recorder: the weights of the CheckFree merge.

Why this exists: CheckFree weights each neighbour by the L2 norm of its gradient in
the last completed step, so every stage must record that norm every step, before
gradient clipping (after clipping to 1.0 all norms are ~1 and the merge degenerates to
a plain average). ``protect()`` can own one recorder per stage and call ``record()``
right before ``optimizer.step()``; a training loop that clips may instead pass the
total norm that ``clip_grad_norm_`` returns, which is the pre-clip norm.

Cost: one fused ``_foreach_norm`` over the gradients and one small reduction; the
result stays a device tensor until ``commit()``, so recording never synchronises a
GPU stream inside the step.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class GradNormRecorder:
    """Records the gradient L2 norm of a set of parameters once per step.

    ``record()`` measures the current ``.grad``s (a step in progress); ``commit(step)``
    marks that step complete. ``norm()`` returns the norm of the last *completed* step,
    the one CheckFree must use (a step that failed half-way has partial gradients).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter] | torch.nn.Module):
        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        self._params = [p for p in params if p.requires_grad]
        self._pending: torch.Tensor | float | None = None
        self._last: float | None = None
        self._last_step: int | None = None

    def record(self, total_norm: torch.Tensor | float | None = None) -> torch.Tensor | float:
        """Measure (or accept) the pre-clip gradient norm of the step in progress."""
        if total_norm is None:
            grads = [p.grad for p in self._params if p.grad is not None]
            if not grads:
                total_norm = 0.0
            else:
                norms = torch._foreach_norm(grads, 2.0)
                total_norm = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)
        self._pending = total_norm.detach() if isinstance(total_norm, torch.Tensor) else float(total_norm)
        return self._pending

    def commit(self, step: int) -> None:
        """The step whose norm was recorded completed: it becomes the one norm() returns."""
        if self._pending is None:
            return
        value = float(self._pending)  # the one host synchronisation, after the step
        self._pending = None
        if math.isfinite(value):  # an overflowed (skipped) AMP step keeps the previous norm
            self._last, self._last_step = value, step

    def norm(self) -> float | None:
        """Pre-clip gradient norm of the last completed step, None before the first."""
        return self._last

    @property
    def step(self) -> int | None:
        """The completed step ``norm()`` belongs to."""
        return self._last_step

    def state_dict(self) -> dict:
        return {"norm": self._last, "step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self._last, self._last_step, self._pending = state.get("norm"), state.get("step"), None
