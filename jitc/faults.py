"""Fault injection: parse ``KIND@rank=R,step=S[,phase=P][,attempt=A]`` and fire faults.

Specs come from ``jitc supervise --inject`` (validated before anything starts) or from
``JITC_INJECT`` for shim-only runs. Parsing lives here and nowhere else. A fault fires in
the rank, step, phase and attempt it names, and is announced to the supervisor first (the
``fault_injected`` event), so detection latency can be measured from the event log.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

from .errors import InjectedFault, UsageError

KINDS = ("crash", "segv", "exception", "exit", "hang", "gil-hang",
         "cuda-error", "nccl-error", "nccl-hang")
PHASES = ("forward", "backward", "optimizer")
# Kinds that fire at the next interposed CUDA/NCCL call after being armed.
ARMED_KINDS = ("cuda-error", "nccl-error", "nccl-hang")
EXIT_CODE = 13   # exit status of the "exit" fault kind
SPEC_FORMAT = "KIND@rank=R,step=S[,phase=forward|backward|optimizer][,attempt=A]"


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    rank: int
    step: int
    phase: str = "forward"
    attempt: int = 0

    def __str__(self) -> str:
        return f"{self.kind}@rank={self.rank},step={self.step},phase={self.phase},attempt={self.attempt}"


def parse_spec(text: str) -> FaultSpec:
    """Parse one spec; raise UsageError with a one-line reason."""
    kind, sep, rest = text.strip().partition("@")
    if not sep:
        raise UsageError(f"bad fault spec {text!r}: expected {SPEC_FORMAT}")
    if kind not in KINDS:
        raise UsageError(f"bad fault spec {text!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise UsageError(f"bad fault spec {text!r}: {item!r} is not key=value")
        if key not in ("rank", "step", "phase", "attempt"):
            raise UsageError(f"bad fault spec {text!r}: unknown field {key!r}")
        if key in fields:
            raise UsageError(f"bad fault spec {text!r}: {key} given twice")
        fields[key] = value
    for required in ("rank", "step"):
        if required not in fields:
            raise UsageError(f"bad fault spec {text!r}: missing {required}=")
    numbers = {}
    for key in ("rank", "step", "attempt"):
        if key in fields:
            try:
                numbers[key] = int(fields[key])
            except ValueError:
                raise UsageError(f"bad fault spec {text!r}: {key} must be an integer") from None
            if numbers[key] < 0:
                raise UsageError(f"bad fault spec {text!r}: {key} must be >= 0")
    phase = fields.get("phase", "forward")
    if phase not in PHASES:
        raise UsageError(f"bad fault spec {text!r}: phase must be one of {', '.join(PHASES)}")
    return FaultSpec(kind, numbers["rank"], numbers["step"], phase, numbers.get("attempt", 0))


def parse_specs(texts: list[str] | tuple[str, ...]) -> list[FaultSpec]:
    """Parse many specs (each item may hold several separated by ';')."""
    specs = []
    for text in texts:
        specs.extend(parse_spec(part) for part in text.split(";") if part.strip())
    return specs


def join_specs(specs: list[FaultSpec]) -> str:
    """The JITC_INJECT value for these specs."""
    return ";".join(str(s) for s in specs)


class Injector:
    """The faults of one rank in one attempt, fired at (step, phase)."""

    def __init__(self, specs: list[FaultSpec], rank: int, attempt: int, announce):
        self._pending = {(s.step, s.phase): s for s in specs
                         if s.rank == rank and s.attempt == attempt}
        self._announce = announce   # callable(spec) -> None: reports fault_injected

    def __bool__(self) -> bool:
        return bool(self._pending)

    def maybe_fire(self, step: int, phase: str, arm=None) -> None:
        spec = self._pending.pop((step, phase), None)
        if spec is not None:
            self._announce(spec)
            fire(spec, arm)


def fire(spec: FaultSpec, arm=None) -> None:
    """Carry out the fault. ``arm(kind)`` arms an interposer fault in the shim."""
    kind = spec.kind
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "segv":
        from ._shim import ffi_lib
        ffi_lib()[1].jitc_fault_segv()
    elif kind == "exception":
        raise InjectedFault(f"injected exception at rank {spec.rank} step {spec.step} ({spec.phase})")
    elif kind == "exit":
        os._exit(EXIT_CODE)
    elif kind == "hang":
        while True:                  # blocks without the GIL
            time.sleep(3600)
    elif kind == "gil-hang":
        # A C call made through PyDLL keeps the GIL for its whole duration, like a C
        # extension stuck in a blocking call: no other Python thread can run.
        libc = ctypes.PyDLL(None)
        while True:
            libc.sleep(3600)
    elif kind in ARMED_KINDS:
        if arm is None:
            raise UsageError(f"fault kind {kind} needs the preloaded shim")
        arm(kind)
    else:  # parse_spec admits only KINDS
        raise AssertionError(kind)
