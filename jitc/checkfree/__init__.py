"""CheckFree / CheckFree+: recover a pipeline stage that lost every replica.

merge.py (the averaging and copy rules), lr.py (fresh optimizer, boosted learning
rate), gradnorm.py (the per-step weights), schedule.py (the CheckFree+ swap schedule
and edge-layer replication), plan.py (which recovery each stage gets).

The names below are imported on first use (PEP 562): most of this package pulls in torch,
and ``plan`` (pure) must not, since the supervisor's planner imports it at start.
"""
from __future__ import annotations

import importlib

_WHERE = {"GradNormRecorder": "gradnorm", "DEFAULT_LR_FACTOR": "lr", "LrRule": "lr",
          "restart_optimizer": "lr", "align": "merge", "merge_weights": "merge",
          "rebuild_edge_stage": "merge", "rebuild_stage": "merge", "Action": "plan",
          "StageAction": "plan", "StageStatus": "plan", "plan_recovery": "plan",
          "EdgeLayout": "schedule", "is_swapped": "schedule", "stage_order": "schedule"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
