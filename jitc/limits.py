"""The limits a rank obeys, set in one place: their defaults, the variables that override
them, and the rules that derive the rest.

Flow. ``jitc supervise`` resolves each limit (flag > environment > default, in
``supervisor/options.py``) and tells the job: ``Limits.to_env()`` goes into the job's
environment, and the shim reads exactly those variables at activation (csrc/config.cpp).
In a shim-only run the user's environment is all there is: the shim and ``protect()`` read
the same variables, check them with the same rules (``env.parse``) and derive the rest with
the same rules (the C++ twins are named beside each constant), so both modes agree.
``jitc_limits()`` in the library reports what the shim uses; tests/supervisor/test_limits.py
holds it against this module.

Relations (they hold by construction; tests/supervisor/test_limits.py asserts them):

- the supervisor's hang backstop fires after the rank's watchdog would
  (``backstop_s(t) > t``);
- a rank holds a SIGTERM strictly less than the grace before SIGKILL (``sigterm_hold_s``);
- the snapshot writer is bounded by exactly the snapshot timeout the user gave, and the
  supervisor waits for its answer that long plus the writer's join grace and a margin.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import env
from .errors import UsageError

# PROGRESS is sent at most every 100 ms when it changed: the heartbeat (kProgressMinIntervalS).
HEARTBEAT_S = 0.1

# The hang rule (csrc/config.h limits::kHang*, csrc/watchdog.cpp): a fixed JITC_HANG_TIMEOUT,
# else HANG_MULTIPLE x the nearest-rank HANG_PERCENTILE of the last HANG_WINDOW step times,
# never below HANG_FLOOR_S, and HANG_INITIAL_S until HANG_MIN_SAMPLES are known. The same
# idea as NVRx's auto-calculated timeouts, with a floor so that a fast warm-up step cannot
# arm a hair trigger.
HANG_FLOOR_S = 30.0
HANG_MULTIPLE = 5.0
HANG_PERCENTILE = 95
HANG_WINDOW = 64
HANG_MIN_SAMPLES = 3
HANG_INITIAL_S = 600.0
# The supervisor's own hang check is a backstop behind the rank's watchdog (which reports
# richer detail): it fires this much after the rank's deadline.
HANG_BACKSTOP_MARGIN_S = 2.0

GRACE_S = 10.0                  # SIGTERM -> SIGKILL (kGraceS)
SIGTERM_HOLD_MARGIN_S = 1.0     # hold = grace - min(this, grace / 2) (kSigtermHoldMarginS)

SNAPSHOT_TIMEOUT_S = 120.0      # kSnapshotTimeoutS
SNAPSHOT_JOIN_GRACE_S = 2.0     # the writer waits this past its deadline (kSnapshotJoinGraceS)
SNAPSHOT_REPLY_MARGIN_S = 1.0   # SNAPSHOT_DONE's way back to the supervisor


def hang_timeout(step_times: Iterable[float], floor_s: float = HANG_FLOOR_S,
                 multiple: float = HANG_MULTIPLE) -> float:
    """The derived hang timeout for a rank whose last step times (oldest first) are
    ``step_times``: the rule above, as csrc/watchdog.cpp computes it."""
    recent = list(step_times)[-HANG_WINDOW:]
    if len(recent) < HANG_MIN_SAMPLES:
        return HANG_INITIAL_S
    ordered = sorted(recent)
    rank = (HANG_PERCENTILE * len(ordered) + 99) // 100   # nearest rank, 1-based
    return max(floor_s, multiple * ordered[rank - 1])


def sigterm_hold_s(grace_s: float) -> float:
    """How long a rank may hold a SIGTERM: strictly less than ``grace_s``."""
    return grace_s - min(SIGTERM_HOLD_MARGIN_S, grace_s / 2)


@dataclass(frozen=True)
class Limits:
    """The limits a rank is told. ``hang_timeout_s`` None: derived from step times."""

    hang_timeout_s: float | None = None
    hang_floor_s: float = HANG_FLOOR_S
    hang_multiple: float = HANG_MULTIPLE
    grace_s: float = GRACE_S
    snapshot_timeout_s: float = SNAPSHOT_TIMEOUT_S

    def __post_init__(self) -> None:
        checks = ((env.HANG_FLOOR, self.hang_floor_s), (env.HANG_MULTIPLE, self.hang_multiple),
                  (env.GRACE, self.grace_s), (env.SNAPSHOT_TIMEOUT, self.snapshot_timeout_s))
        if self.hang_timeout_s is not None:
            checks += ((env.HANG_TIMEOUT, self.hang_timeout_s),)
        for name, value in checks:
            if not (isinstance(value, (int, float)) and env.RULES[name].accepts(value)):
                raise UsageError(f"{_label(name)} must be {env.RULES[name].text}, got {value}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **explicit) -> "Limits":
        """Explicit values (not None) > the environment > the defaults. A malformed
        variable raises UsageError naming it (``JITC_GRACE='x': must be ...``)."""
        values = {field: env.read(name, None, environ) for field, name in _FIELDS.items()}
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**{k: float(v) for k, v in values.items() if v is not None})

    def to_env(self) -> dict[str, str]:
        """What the supervisor puts into the job's environment: every limit, resolved."""
        return {name: repr(float(getattr(self, field))) for field, name in _FIELDS.items()
                if getattr(self, field) is not None}

    @property
    def sigterm_hold_s(self) -> float:
        return sigterm_hold_s(self.grace_s)

    @property
    def snapshot_wait_s(self) -> float:
        """How long the supervisor waits for every SNAPSHOT_DONE: the writer's bound, its
        join grace and the way back."""
        return self.snapshot_timeout_s + SNAPSHOT_JOIN_GRACE_S + SNAPSHOT_REPLY_MARGIN_S

    def hang_timeout(self, step_times: Iterable[float]) -> float:
        """The rank's hang timeout after these step times (fixed, or the rule)."""
        if self.hang_timeout_s is not None:
            return self.hang_timeout_s
        return hang_timeout(step_times, self.hang_floor_s, self.hang_multiple)

    @staticmethod
    def backstop_s(rank_timeout_s: float) -> float:
        """Silence after which the supervisor declares a hang itself, for a rank whose
        watchdog fires after ``rank_timeout_s``."""
        return rank_timeout_s + HANG_BACKSTOP_MARGIN_S


_FIELDS = {"hang_timeout_s": env.HANG_TIMEOUT, "hang_floor_s": env.HANG_FLOOR,
           "hang_multiple": env.HANG_MULTIPLE, "grace_s": env.GRACE,
           "snapshot_timeout_s": env.SNAPSHOT_TIMEOUT}
_FLAGS = {env.HANG_TIMEOUT: "--hang-timeout", env.GRACE: "--grace",
          env.SNAPSHOT_TIMEOUT: "--snapshot-timeout"}


def _label(name: str) -> str:
    flag = _FLAGS.get(name)
    return f"{flag} ({name})" if flag else name


def attempt(environ: Mapping[str, str] | None = None, default: int = 0) -> int:
    """JITC_ATTEMPT, checked (``JITC_ATTEMPT='zz': must be an integer >= 0``)."""
    return env.read(env.ATTEMPT, default, environ)


def check_rank_env() -> Limits:
    """For ``protect()`` in a rank: the limits and attempt the environment gives, or the
    reason it is malformed as one line and exit 2 (the supervisor refuses the same values
    before starting anything; a traceback in every rank would bury it)."""
    try:
        attempt()
        return Limits.from_env()
    except UsageError as e:
        print(f"jitc: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

