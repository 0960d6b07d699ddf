"""Wire format of the rank <-> supervisor channel (docs/internals.md, "Channel").

AF_UNIX SOCK_SEQPACKET: one record per message, an 8-byte header and a JSON object.
This module is the Python half; csrc/channel.cpp is the C++ half.

``decode`` is where a record is judged, once: the header, strict UTF-8, JSON without
non-finite numbers (Python's json takes ``Infinity``: one such FAILURE used to crash the
supervisor), integers within int64, no duplicate keys, and each message type's body
against its schema (``SCHEMAS``). Whatever fails is a ``ProtocolError``, which the
receiver logs and drops; what passes is well typed, so the supervisor's loop needs no
checks of its own. Unknown keys pass through unchecked (forward compatibility).
"""
from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ProtocolError
from .snapshot.layout import is_plain_name

MAGIC = b"JT"
VERSION = 1
HEADER = struct.Struct("<2sBBI")
MAX_PAYLOAD = 60 * 1024
MAX_RECORD = HEADER.size + MAX_PAYLOAD


class Msg(enum.IntEnum):
    # rank -> supervisor
    HELLO = 1
    PROGRESS = 2
    FAILURE = 3
    GOODBYE = 4
    SNAPSHOT_DONE = 5
    FAULT_INJECTED = 6
    RESUMED = 7
    STATE = 8
    # supervisor -> rank
    QUERY = 64
    SNAPSHOT = 65
    RELEASE = 66


@dataclass(frozen=True)
class Message:
    type: Msg
    body: dict[str, Any]


def encode(mtype: Msg, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"{mtype.name} payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, int(mtype), len(payload)) + payload


RANK_TYPES = frozenset({Msg.HELLO, Msg.PROGRESS, Msg.FAILURE, Msg.GOODBYE, Msg.SNAPSHOT_DONE,
                        Msg.FAULT_INJECTED, Msg.RESUMED, Msg.STATE})

# Phase indices (docs/internals.md, "Phases and progress"); the wire carries either form.
PHASES = {"idle": 0, "forward": 1, "backward": 2, "optimizer": 3}

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_WORLD = 1 << 20          # ranks in one job: far beyond any real one
MAX_LIST = 1 << 16           # stripes in a command, entries in a progress tuple

Check = Callable[[Any], bool]


def _int(lo: int = INT64_MIN, hi: int = INT64_MAX) -> Check:
    return lambda v: type(v) is int and lo <= v <= hi      # bool is an int: not here


def _num(lo: float = -math.inf) -> Check:
    return lambda v: type(v) in (int, float) and math.isfinite(v) and v >= lo


def _str(v: Any) -> bool:
    if type(v) is not str:
        return False
    try:
        v.encode("utf-8")      # a lone surrogate (from a \ud800 escape) is not text
    except UnicodeEncodeError:
        return False
    return True


def _bool(v: Any) -> bool:
    return type(v) is bool


def _phase(v: Any) -> bool:
    return (type(v) is str and v in PHASES) or (type(v) is int and v in PHASES.values())


def _ints(max_len: int, lo: int = INT64_MIN, hi: int = INT64_MAX) -> Check:
    item = _int(lo, hi)
    return lambda v: type(v) is list and len(v) <= max_len and all(item(x) for x in v)


def _stems(v: Any) -> bool:
    """File stems of a SNAPSHOT's stripes: plain file names (layout.py), each once."""
    return (type(v) is list and len(v) <= MAX_LIST and all(is_plain_name(x) for x in v)
            and len(set(v)) == len(v))


def _nullable(check: Check) -> Check:
    return lambda v: v is None or check(v)


RANK, NAT, COUNT, INT = _int(0, MAX_WORLD - 1), _int(0), _int(1, MAX_WORLD), _int()
TS = _num()

# type -> {field: (check, required)}. Optional fields may be null (the shim writes a
# non-finite float as null). The rank's fields are those csrc/ writes (api.cpp, agent.cpp,
# state.cpp, signals.cpp); the supervisor's those of jitc/supervisor/planner/.
SCHEMAS: dict[Msg, dict[str, tuple[Check, bool]]] = {
    Msg.HELLO: {"rank": (RANK, True), "pid": (_int(1, (1 << 31) - 1), True),
                "world_size": (COUNT, False), "local_rank": (RANK, False),
                "attempt": (NAT, False), "host": (_str, False), "shard": (RANK, False),
                "num_shards": (COUNT, False), "ts": (TS, False)},
    Msg.PROGRESS: {"rank": (RANK, False), "step": (INT, False), "completed": (INT, False),
                   "phase": (_phase, False), "step_time": (_num(0.0), False),
                   "marks": (NAT, False), "hang_timeout": (_num(0.0), False),
                   "ts": (TS, False)},
    Msg.FAILURE: {"kind": (_str, True), "rank": (RANK, False), "step": (INT, False),
                  "phase": (_phase, False), "detail": (_str, False),
                  "progress": (_ints(8), False), "elapsed": (_num(0.0), False),
                  "timeout": (_num(0.0), False), "signal": (_str, False),
                  "error": (_str, False), "code": (INT, False), "region": (_str, False),
                  "region_kind": (INT, False), "severity": (_str, False),
                  "ts": (TS, False)},
    Msg.GOODBYE: {"rank": (RANK, False), "completed": (INT, False), "ts": (TS, False)},
    Msg.SNAPSHOT_DONE: {"id": (_str, True), "stripe": (_int(-1, MAX_LIST), True),
                        "ok": (_bool, True), "rank": (RANK, False),
                        "nstripes": (_int(0, MAX_LIST), False), "step": (INT, False),
                        "file": (_str, False), "bytes": (NAT, False),
                        "crc32c": (_int(0, 0xFFFFFFFF), False),
                        "fingerprint": (_str, False), "error": (_str, False),
                        "ts": (TS, False)},
    Msg.FAULT_INJECTED: {"rank": (RANK, False), "kind": (_str, False), "step": (INT, False),
                         "phase": (_phase, False), "ts": (TS, False)},
    Msg.RESUMED: {"step": (INT, True), "rank": (RANK, False), "manifest": (_str, False),
                  "ts": (TS, False)},
    Msg.STATE: {"completed": (INT, False), "window_open": (_bool, False),
                "usable": (_bool, False), "fingerprint": (_str, False), "nbytes": (NAT, False),
                "shard": (RANK, False), "rank": (RANK, False), "ts": (TS, False)},
    Msg.QUERY: {},
    Msg.SNAPSHOT: {"id": (_str, True), "dir": (_str, True),
                   "stripes": (_ints(MAX_LIST, 0, MAX_LIST - 1), True),
                   "files": (_stems, True),
                   "nstripes": (_int(1, MAX_LIST), True), "step": (INT, False),
                   "timeout": (_num(0.0), False)},
    Msg.RELEASE: {},
}


def validate(kind: Msg, body: dict[str, Any]) -> None:
    """``ProtocolError`` naming the first field of ``body`` that breaks ``kind``'s schema."""
    for name, (check, required) in SCHEMAS[kind].items():
        if name not in body:
            if required:
                raise ProtocolError(f"{kind.name}: missing {name!r}")
            continue
        value = body[name]
        if value is None and not required:
            continue
        if not check(value):
            raise ProtocolError(f"{kind.name}: bad {name!r}: {_short(value)}")
    if kind is Msg.HELLO:
        world, shards = body.get("world_size"), body.get("num_shards")
        if world is not None and body["rank"] >= world:
            raise ProtocolError(f"HELLO: rank {body['rank']} outside world_size {world}")
        if shards is not None and body.get("shard") is not None and body["shard"] >= shards:
            raise ProtocolError(f"HELLO: shard {body['shard']} outside num_shards {shards}")
        if shards is not None and world is not None and shards > world:
            raise ProtocolError(f"HELLO: num_shards {shards} exceeds world_size {world}")
    if kind is Msg.SNAPSHOT and any(j >= body["nstripes"] for j in body["stripes"]):
        raise ProtocolError("SNAPSHOT: stripe index outside nstripes")
    if kind is Msg.SNAPSHOT and len(body["files"]) != len(body["stripes"]):
        raise ProtocolError("SNAPSHOT: files and stripes differ in length")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):          # 1e999 parses as inf
        raise ValueError(f"number out of range: {text[:30]}")
    return value


def _int64(text: str) -> int:
    if len(text) > 20:                    # before int(): 10**4300 digits cost time
        raise ValueError(f"integer out of range: {text[:30]}...")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer out of range: {text}")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def loads(payload: bytes) -> Any:
    """Strict JSON: UTF-8, finite numbers, int64 integers, unique keys."""
    return json.loads(payload.decode("utf-8"), parse_float=_finite, parse_int=_int64,
                      parse_constant=_constant, object_pairs_hook=_unique)


def decode(record: bytes) -> Message:
    """The message in ``record``, well typed; ``ProtocolError`` for anything else (a
    version we do not speak raises ``VersionError``: the receiver closes)."""
    if len(record) < HEADER.size:
        raise ProtocolError(f"short record ({len(record)} bytes)")
    magic, version, mtype, length = HEADER.unpack_from(record)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != VERSION:
        raise VersionError(f"protocol version {version}, this side speaks {VERSION}")
    if length != len(record) - HEADER.size:
        raise ProtocolError(f"length field {length} != payload {len(record) - HEADER.size}")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    try:
        kind = Msg(mtype)
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype}") from None
    try:
        body = loads(record[HEADER.size:])
    except UnicodeDecodeError:
        raise ProtocolError(f"{kind.name}: payload is not UTF-8") from None
    except RecursionError:
        raise ProtocolError(f"{kind.name}: payload nested too deeply") from None
    except ValueError as e:               # JSONDecodeError and the hooks' refusals
        raise ProtocolError(f"{kind.name}: payload is not valid JSON ({_short(str(e))})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind.name}: payload is not a JSON object")
    validate(kind, body)
    return Message(kind, body)


class VersionError(ProtocolError):
    """A record in a protocol version this side does not speak: close the connection."""
