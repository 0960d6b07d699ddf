"""Every environment variable jitc reads or sets, in one place.

Precedence everywhere: an explicit argument beats the environment, which beats the default.
The C++ side reads the same names in csrc/config.cpp; docs/internals.md is the table.
"""
from __future__ import annotations

import os

SOCKET = "JITC_SOCKET"          # supervisor socket path; unset = no supervisor
RUN_DIR = "JITC_RUN_DIR"        # supervisor run directory
DIR = "JITC_DIR"                # snapshot root
ATTEMPT = "JITC_ATTEMPT"        # attempt number, 0 first
RESUME = "JITC_RESUME"          # manifest to resume from
INJECT = "JITC_INJECT"          # fault specs, ";"-separated
HANG_TIMEOUT = "JITC_HANG_TIMEOUT"  # fixed hang timeout in seconds
HANG_FLOOR = "JITC_HANG_FLOOR"      # derived hang timeout: floor, seconds
HANG_MULTIPLE = "JITC_HANG_MULTIPLE"  # derived hang timeout: multiple of p95 step time
DEBUG = "JITC_DEBUG"            # "1": shim logs to stderr
LIB = "JITC_LIB"                # override path of libjitc.so (development)
LD_PRELOAD = "LD_PRELOAD"


def get(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def get_int(name: str, default: int) -> int:
    value = get(name)
    return default if value is None else int(value)


def get_float(name: str, default: float | None) -> float | None:
    value = get(name)
    return default if value is None else float(value)


def rank_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; (0, 0, 1) outside torchrun."""
    return get_int("RANK", 0), get_int("LOCAL_RANK", 0), get_int("WORLD_SIZE", 1)
