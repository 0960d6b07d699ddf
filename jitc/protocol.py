"""Wire format of the rank <-> supervisor channel (docs/internals.md, "Channel").

AF_UNIX SOCK_SEQPACKET: one record per message, an 8-byte header and a JSON object.
This module is the Python half; csrc/channel.cpp is the C++ half.
"""
from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

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


def decode(record: bytes) -> Message:
    if len(record) < HEADER.size:
        raise ProtocolError(f"short record ({len(record)} bytes)")
    magic, version, mtype, length = HEADER.unpack_from(record)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {VERSION}")
    if length != len(record) - HEADER.size:
        raise ProtocolError(f"length field {length} != payload {len(record) - HEADER.size}")
    try:
        kind = Msg(mtype)
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype}") from None
    try:
        body = json.loads(record[HEADER.size:])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"{kind.name}: payload is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind.name}: payload is not a JSON object")
    return Message(kind, body)
