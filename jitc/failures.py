"""What a failure kind means, read from the one table both languages use
(``jitc/failure_kinds.def``, which explains each column; csrc/failure.h compiles the same
lines into the shim).

Everything that asks "may this rank write?", "is this a hang?", "does this stop the
job?" or "can this be the root cause?" asks here, never by comparing kind strings.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("failure_kinds.def")
_KIND = re.compile(r'^JITC_FAILURE\(\s*(\w+),\s*"([a-z-]+)",\s*(TRUSTED|SUSPECT),\s*'
                   r'(HANG|NOHANG),\s*(FATAL|BYCODE),\s*(SELF|PROGRESS|NEVER)\s*\)\s*$')
_SEVERITY = re.compile(r'^JITC_SEVERITY\(\s*(\w+),\s*"([a-z]+)"\s*\)\s*$')


class Severity(str, enum.Enum):
    """As FAILURE's ``severity`` spells it. Only FATAL starts recovery."""

    BENIGN = "benign"
    RECOVERABLE = "recoverable"
    FATAL = "fatal"


class Blame(str, enum.Enum):
    SELF = "self"           # a root-cause candidate: the earliest such report wins
    PROGRESS = "progress"   # only when every primary report is a hang: least progress
    NEVER = "never"         # secondary: never a root cause


@dataclass(frozen=True)
class Kind:
    name: str
    trusted: bool           # the reporter's registered state may still be written
    hang: bool
    by_code: bool           # severity decided by the CUDA/NCCL return code
    blame: Blame

    @property
    def secondary(self) -> bool:
        return self.blame is Blame.NEVER


def _parse(text: str) -> tuple[dict[str, Kind], tuple[str, ...]]:
    kinds: dict[str, Kind] = {}
    severities: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        m = _KIND.match(line)
        if m:
            _, name, state, hang, severity, blame = m.groups()
            if name in kinds:
                raise ValueError(f"{TABLE.name}:{n}: kind {name!r} listed twice")
            kinds[name] = Kind(name, state == "TRUSTED", hang == "HANG", severity == "BYCODE",
                               Blame(blame.lower()))
            continue
        m = _SEVERITY.match(line)
        if m:
            severities.append(m.group(2))
            continue
        raise ValueError(f"{TABLE.name}:{n}: not a table line: {line}")
    return kinds, tuple(severities)


KINDS, SEVERITIES = _parse(TABLE.read_text(encoding="utf-8"))

# The kinds Python code fires by name (excepthook.py, the supervisor's own detections).
EXCEPTION, PEER, CRASH, EXIT, HANG = "exception", "peer", "crash", "exit", "hang"
HANG_KINDS = frozenset(k.name for k in KINDS.values() if k.hang)
SECONDARY_KINDS = frozenset(k.name for k in KINDS.values() if k.secondary)


def kind(name: str) -> Kind:
    """The table's entry; a kind the table does not know (a newer shim) is taken as the
    safe reading: primary, suspect, not a hang."""
    found = KINDS.get(name)
    return found if found is not None else Kind(name, False, False, False, Blame.SELF)


def severity(name: str, reported: object) -> Severity:
    """The severity of a report of kind ``name`` that carried ``reported`` (absent or
    unknown: fatal, which is what every report meant before severities existed). A kind
    whose severity is not decided by a return code is always fatal."""
    if kind(name).by_code and isinstance(reported, str):
        try:
            return Severity(reported)
        except ValueError:
            pass
    return Severity.FATAL
