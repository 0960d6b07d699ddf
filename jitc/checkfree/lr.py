"""The learning-rate rule for a rebuilt stage.

Why this exists: a stage rebuilt by CheckFree starts from an average that none of the
surviving stages trained, with no optimizer history. The method gives it a fresh
optimizer state and a learning rate raised by a factor (1.1 by default) so it catches
up with its neighbours.

WARNING: building a *new* warm-up scheduler for the fresh optimizer restarts the
warm-up at zero, so the first update after recovery has learning rate 0 (a defect of
the public reference code). ``restart_optimizer`` instead builds the scheduler and
advances it to the step the job is at, then scales every learning rate it will hand
out by the factor, so the first post-recovery update uses factor x lr(step).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..errors import RecoveryError

DEFAULT_LR_FACTOR = 1.1

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], "torch.optim.lr_scheduler.LRScheduler"]


@dataclass(frozen=True)
class LrRule:
    """How a rebuilt stage's learning rate relates to the rest of the job's."""

    factor: float = DEFAULT_LR_FACTOR

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise RecoveryError(f"learning-rate factor must be > 0, got {self.factor!r}")

    def apply(self, optimizer: torch.optim.Optimizer,
              scheduler: "torch.optim.lr_scheduler.LRScheduler | None" = None) -> None:
        """Scale the optimizer's learning rates (and the scheduler's bases) by ``factor``.

        Scaling ``base_lrs`` too keeps the boost for schedulers that recompute the rate
        from the bases every step (LambdaLR, cosine); scaling ``lr`` covers the ones
        that multiply the current rate (StepLR, ExponentialLR).
        """
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * self.factor
            if "initial_lr" in group:
                group["initial_lr"] = group["initial_lr"] * self.factor
        if scheduler is not None:
            scheduler.base_lrs = [lr * self.factor for lr in scheduler.base_lrs]
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports


def restart_optimizer(params: Iterable[torch.nn.Parameter], make_optimizer: OptimizerFactory, *,
                      step: int, make_scheduler: SchedulerFactory | None = None,
                      rule: LrRule = LrRule()):
    """Fresh optimizer (and scheduler) for a rebuilt stage, positioned at ``step``.

    ``step`` is the number of completed optimizer steps of the job: the scheduler is
    advanced that many times so the rebuilt stage follows the same schedule as its
    neighbours, then the rule scales it. Returns ``(optimizer, scheduler_or_None)``.
    """
    if step < 0:
        raise RecoveryError(f"step must be >= 0, got {step}")
    optimizer = make_optimizer(params)
    scheduler = None
    if make_scheduler is not None:
        scheduler = make_scheduler(optimizer)
        with warnings.catch_warnings():
            # "scheduler.step() before optimizer.step()": intended, we fast-forward.
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                scheduler.step()
    rule.apply(optimizer, scheduler)
    return optimizer, scheduler
