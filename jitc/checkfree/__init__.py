"""CheckFree / CheckFree+: recover a pipeline stage that lost every replica.

merge.py (the averaging and copy rules), lr.py (fresh optimizer, boosted learning
rate), gradnorm.py (the per-step weights), schedule.py (the CheckFree+ swap schedule
and edge-layer replication), plan.py (which recovery each stage gets).

The names below are imported on first use (PEP 562): most of this package pulls in torch,
and ``plan`` (pure) must not, since the supervisor's planner imports it at start.
"""
from __future__ import annotations

from .. import _lazy

_WHERE = {"GradNormRecorder": "gradnorm", "DEFAULT_LR_FACTOR": "lr", "LrRule": "lr",
          "restart_optimizer": "lr", "align": "merge", "merge_weights": "merge",
          "rebuild_edge_stage": "merge", "rebuild_stage": "merge", "Action": "plan",
          "StageAction": "plan", "StageStatus": "plan", "plan_recovery": "plan",
          "EdgeLayout": "schedule", "is_swapped": "schedule", "stage_order": "schedule"}

__all__ = list(_WHERE)


__getattr__ = _lazy.attributes(__name__, _WHERE)
