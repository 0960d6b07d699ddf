"""The CheckFree+ out-of-order pipeline schedule and edge-layer replication.

Why this exists: CheckFree rebuilds a lost stage from *two* neighbours, which the first
and last stages do not have. CheckFree+ makes them recoverable by copy: on half the
microbatches the first two stages swap places (0<->1) and so do the last two
(S-2<->S-1), so stage 1 also learns to act as stage 0 and stage S-2 as stage S-1. The
embedding and the output head, which only an edge stage owns, are replicated to the
neighbouring stage; whichever of the pair runs first embeds (runs last, projects).

Indices here are 0-based (the paper's 1<->2 and (L-1)<->L). Any S >= 4 works; nothing
is specific to a particular stage count (the public reference code hard-coded six).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

MIN_STAGES_PLUS = 4


def check_stages(num_stages: int) -> None:
    if num_stages < MIN_STAGES_PLUS:
        raise UsageError(f"CheckFree+ needs at least {MIN_STAGES_PLUS} pipeline stages, got {num_stages}")


def is_swapped(microbatch: int) -> bool:
    """Odd microbatches run in swapped order: exactly half of an even count."""
    return microbatch % 2 == 1


def stage_order(num_stages: int, microbatch: int, checkfree_plus: bool) -> list[int]:
    """The stages in the order microbatch ``microbatch`` visits them."""
    order = list(range(num_stages))
    if checkfree_plus:
        check_stages(num_stages)
        if is_swapped(microbatch):
            order[0], order[1] = order[1], order[0]
            order[-2], order[-1] = order[-1], order[-2]
    return order


def neighbours(order: list[int], stage: int) -> tuple[int | None, int | None]:
    """(stage that feeds ``stage``, stage it feeds) in this order; None at either end."""
    i = order.index(stage)
    return (order[i - 1] if i > 0 else None, order[i + 1] if i + 1 < len(order) else None)


@dataclass(frozen=True)
class EdgeLayout:
    """Which stages hold the embedding and the output head.

    Without CheckFree+: only stage 0 embeds and only stage S-1 projects. With it, the
    pair (0, 1) both hold the embedding and (S-2, S-1) both hold the head; the two
    copies are kept identical by summing their gradients over the pair every step.
    """

    num_stages: int
    checkfree_plus: bool

    @property
    def embedding_holders(self) -> tuple[int, ...]:
        return (0, 1) if self.checkfree_plus else (0,)

    @property
    def head_holders(self) -> tuple[int, ...]:
        s = self.num_stages
        return (s - 2, s - 1) if self.checkfree_plus else (s - 1,)

    def holds_embedding(self, stage: int) -> bool:
        return stage in self.embedding_holders

    def holds_head(self, stage: int) -> bool:
        return stage in self.head_holders

    def copy_source(self, stage: int) -> int | None:
        """The neighbour a lost edge stage is copied from, None if it cannot be."""
        if not self.checkfree_plus:
            return None
        if stage == 0:
            return 1
        if stage == self.num_stages - 1:
            return self.num_stages - 2
        return None
