"""CheckFree / CheckFree+: recover a pipeline stage that lost every replica.

merge.py (the averaging and copy rules), lr.py (fresh optimizer, boosted learning
rate), gradnorm.py (the per-step weights), schedule.py (the CheckFree+ swap schedule
and edge-layer replication), plan.py (which recovery each stage gets).
"""
from .gradnorm import GradNormRecorder
from .lr import DEFAULT_LR_FACTOR, LrRule, restart_optimizer
from .merge import align, merge_weights, rebuild_edge_stage, rebuild_stage
from .plan import Action, StageAction, StageStatus, plan_recovery
from .schedule import EdgeLayout, is_swapped, stage_order

__all__ = [
    "GradNormRecorder", "DEFAULT_LR_FACTOR", "LrRule", "restart_optimizer", "align",
    "merge_weights", "rebuild_edge_stage", "rebuild_stage", "Action", "StageAction",
    "StageStatus", "plan_recovery", "EdgeLayout", "is_swapped", "stage_order",
]
