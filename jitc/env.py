"""Every environment variable jitc reads or sets, in one place, and how a value is checked.

Precedence everywhere: an explicit argument (a flag) beats the environment, which beats the
default. The C++ side reads the same names in csrc/config.cpp with the same grammar, ranges
and messages (``read``); docs/internals.md is the table.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Mapping

from .errors import UsageError

SOCKET = "JITC_SOCKET"          # supervisor socket path; unset = no supervisor
RUN_DIR = "JITC_RUN_DIR"        # supervisor run directory
DIR = "JITC_DIR"                # snapshot root
ATTEMPT = "JITC_ATTEMPT"        # attempt number, 0 first
RESUME = "JITC_RESUME"          # manifest to resume from
INJECT = "JITC_INJECT"          # fault specs, ";"-separated
HANG_TIMEOUT = "JITC_HANG_TIMEOUT"  # fixed hang timeout in seconds
HANG_FLOOR = "JITC_HANG_FLOOR"      # derived hang timeout: floor, seconds
HANG_MULTIPLE = "JITC_HANG_MULTIPLE"  # derived hang timeout: multiple of p95 step time
GRACE = "JITC_GRACE"            # SIGTERM -> SIGKILL when the job is stopped, seconds
SNAPSHOT_TIMEOUT = "JITC_SNAPSHOT_TIMEOUT"  # bound on writing a just-in-time snapshot
DEBUG = "JITC_DEBUG"            # "1": shim logs to stderr
LIB = "JITC_LIB"                # override path of libjitc.so (development)
LD_PRELOAD = "LD_PRELOAD"


@dataclass(frozen=True)
class Rule:
    """How a variable's value is checked. ``text`` completes "must be ..."."""

    integer: bool
    minimum: float
    strict: bool
    text: str

    def accepts(self, value: float) -> bool:
        return math.isfinite(value) and (value > self.minimum if self.strict
                                         else value >= self.minimum)


# Two progress heartbeats (limits.HEARTBEAT_S): a hang deadline below that fires on a
# healthy rank. The C++ twin of this table is csrc/config.cpp's Rule constants.
_HANG = Rule(False, 0.2, True, "a number of seconds > 0.2")
RULES: dict[str, Rule] = {
    ATTEMPT: Rule(True, 0, False, "an integer >= 0"),
    HANG_TIMEOUT: _HANG,
    HANG_FLOOR: _HANG,
    HANG_MULTIPLE: Rule(False, 1, False, "a number >= 1"),
    GRACE: Rule(False, 0, True, "a number of seconds > 0"),
    SNAPSHOT_TIMEOUT: Rule(False, 0, True, "a number of seconds > 0"),
}
# No spaces, hex, inf/nan or underscores: what C's strtod and Python's float() agree on.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT_MAX = 2**31 - 1


def get(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def parse(name: str, text: str) -> float | int:
    """``text`` as the value of ``name`` under its rule, else UsageError, one line:
    ``JITC_HANG_TIMEOUT='-5': must be a number of seconds > 0.2``."""
    rule = RULES[name]
    pattern = _INTEGER if rule.integer else _DECIMAL
    value = float(text) if pattern.fullmatch(text) else math.nan
    if rule.accepts(value) and not (rule.integer and value > _INT_MAX):
        return int(value) if rule.integer else value
    raise UsageError(f"{name}='{text}': must be {rule.text}")


def read(name: str, default, environ: Mapping[str, str] | None = None):
    """The checked value of ``name`` from ``environ`` (default: os.environ); ``default``
    when unset or empty."""
    source = os.environ if environ is None else environ
    text = source.get(name)
    return default if text in (None, "") else parse(name, text)


def get_int(name: str, default: int) -> int:
    """torchrun's own variables (RANK, ...), trusted as torchrun sets them."""
    value = get(name)
    return default if value is None else int(value)


def rank_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; (0, 0, 1) outside torchrun."""
    return get_int("RANK", 0), get_int("LOCAL_RANK", 0), get_int("WORLD_SIZE", 1)
