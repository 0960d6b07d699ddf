"""The supervisor's end of the rank channel: a SOCK_SEQPACKET listener and one
``Connection`` per rank, with what the supervisor knows about each rank.

Everything is non-blocking; the loop's selector says when to call ``accept`` and
``Connection.read``. A malformed record is dropped (docs/internals.md); a record in a
protocol version we do not speak closes the connection.
"""
from __future__ import annotations

import errno
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import protocol
from ..errors import ProtocolError
from ..protocol import Message, Msg

PHASES = {"idle": 0, "forward": 1, "backward": 2, "optimizer": 3}
STEP_TIME_WINDOW = 256        # step times kept per rank for the derived hang timeout


def phase_index(value: Any) -> int:
    """PROGRESS/FAILURE carry the phase as a name or an index; compare by index."""
    if isinstance(value, int):
        return value
    return PHASES.get(str(value), 0)


def phase_name(value: Any) -> Any:
    """The phase as the event log writes it: a name (``forward``...), never an index."""
    if isinstance(value, int):
        return next((name for name, i in PHASES.items() if i == value), value)
    return value


@dataclass
class RankInfo:
    """What the supervisor knows about one rank in the current attempt."""

    rank: int
    pid: int | None = None
    shard: int = 0
    num_shards: int = 1
    world_size: int | None = None
    step: int | None = None            # step now running (PROGRESS)
    completed: int | None = None       # steps finished
    phase: int = 0
    last_change: float = 0.0           # when step/completed/phase last changed (loop clock)
    step_times: deque = field(default_factory=lambda: deque(maxlen=STEP_TIME_WINDOW))
    connected: bool = True
    goodbye: bool = False
    failed: bool = False               # a failure was recorded for this rank
    state: dict[str, Any] | None = None   # last STATE answer


class Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rank: int | None = None   # known after HELLO
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> tuple[list[Message], bool]:
        """(messages now available, eof). Drains the socket without blocking."""
        messages: list[Message] = []
        while True:
            try:
                record = self.sock.recv(protocol.MAX_RECORD + 1)
            except (BlockingIOError, InterruptedError):
                return messages, False
            except OSError:                # ECONNRESET and friends: the peer is gone
                return messages, True
            if not record:
                return messages, True
            try:
                messages.append(protocol.decode(record))
            except ProtocolError as e:
                if "version" in str(e):
                    return messages, True
                continue                   # bad magic / length: drop the record

    def send(self, mtype: Msg, body: dict[str, Any]) -> bool:
        """Best effort: a rank that is gone or not reading must not stall the supervisor."""
        if self.closed:
            return False
        try:
            self.sock.send(protocol.encode(mtype, body), socket.MSG_DONTWAIT)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class Server:
    """The listening socket at ``path``."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists() or path.is_symlink():
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(str(path))
        self.sock.listen(1024)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> list[Connection]:
        conns = []
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return conns
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    return conns           # retried on the next wake-up
                raise
            sock.setblocking(False)
            conns.append(Connection(sock))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
