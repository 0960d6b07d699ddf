"""Restart policy: how many times a failed job is started again.

A small class rather than an ``if`` in the loop so a later policy (back-off, a budget per
hour) replaces it without touching the loop.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")

    def allows_restart(self, failed_attempt: int) -> bool:
        """May attempt ``failed_attempt + 1`` start? Attempt 0 is the first start, so
        ``max_restarts=3`` allows attempts 1, 2 and 3."""
        return failed_attempt + 1 <= self.max_restarts
