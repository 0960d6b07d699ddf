"""The supervisor's end of the rank channel: a SOCK_SEQPACKET listener and one
``Connection`` per rank, with what the supervisor knows about each rank.

Everything is non-blocking; the loop's selector says when to call ``accept`` and
``Connection.read``. A malformed record (``protocol.decode`` judges it, schema included)
is dropped with one log line (docs/internals.md); a record in a protocol version we do
not speak closes the connection.

Who may talk to the supervisor: only processes of its own user. The socket is 0600 in a
0700 run directory, and ``accept`` checks each peer's credentials (SO_PEERCRED) anyway: a
run directory is not the only way to reach a socket (a descriptor passed on, a path
reached before the checks). A connection remembers the peer's pid, so a HELLO can claim
only the process that made the connection.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import protocol
from ..limits import HANG_WINDOW      # step times kept per rank: what the hang rule reads
from ..errors import ProtocolError
from ..protocol import Message, Msg

PHASES = protocol.PHASES


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
    node: int | None = None            # the machine it runs on (None: this supervisor's)
    step: int | None = None            # step now running (PROGRESS)
    completed: int | None = None       # steps finished
    phase: int = 0
    last_change: float = 0.0           # when step/completed/phase last changed (loop clock)
    step_times: deque = field(default_factory=lambda: deque(maxlen=HANG_WINDOW))
    connected: bool = True
    goodbye: bool = False
    failed: bool = False               # a failure was recorded for this rank
    state: dict[str, Any] | None = None   # last STATE answer


# Malformed records logged per connection; past that they are dropped silently (a peer
# that sends garbage in a loop must not flood the supervisor's stderr).
MAX_DROP_LOGS = 20
_CRED = struct.Struct("3i")     # struct ucred: pid, uid, gid

Log = Callable[[str], None]


def _stderr(text: str) -> None:
    print(f"jitc: {text}", file=sys.stderr, flush=True)


def _quiet(log: Log) -> Log:
    """``log``, except that a closed or broken stderr is not an error: a peer's bad frame
    must not be able to end the supervisor through its log line."""
    def write(text: str) -> None:
        try:
            log(text)
        except (OSError, ValueError):
            pass
    return write


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected ``sock``."""
    return _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))


class Connection:
    def __init__(self, sock: socket.socket, peer_pid: int | None = None, log: Log = _stderr):
        self.sock = sock
        self.peer_pid = peer_pid       # from SO_PEERCRED: what a HELLO's pid must be
        self.rank: int | None = None   # known after HELLO
        self.closed = False
        self.dropped = 0               # malformed records dropped
        self._log = _quiet(log)

    def drop(self, why: str) -> None:
        """Log (bounded) that a record from this peer was dropped, and why."""
        self.dropped += 1
        who = f"rank {self.rank}" if self.rank is not None else f"pid {self.peer_pid}"
        if self.dropped <= MAX_DROP_LOGS:
            self._log(f"dropped a record from {who}: {why}")
        if self.dropped == MAX_DROP_LOGS:
            self._log(f"further malformed records from {who} are dropped without a log line")

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
                msg = protocol.decode(record)
            except protocol.VersionError as e:
                self._log(f"closing the connection of pid {self.peer_pid}: {e}")
                return messages, True
            except ProtocolError as e:
                self.drop(str(e))
                continue
            if msg.type not in protocol.RANK_TYPES:
                self.drop(f"{msg.type.name} is a supervisor command, not a rank's report")
                continue
            messages.append(msg)

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


def hello_refusal(conn: Connection, body: dict[str, Any], rank_conn: dict[int, Connection],
                  ranks: dict[int, RankInfo]) -> str | None:
    """Why the (well-typed) HELLO ``body`` on ``conn`` must be dropped, or None. A HELLO
    claims a rank for the process that made the connection: its pid must be the peer's,
    the rank must not be held by another open connection, and the world and number of
    shards it names must be those the attempt's other ranks named."""
    rank, pid = body["rank"], body["pid"]
    if conn.rank is not None:
        return f"a second HELLO on rank {conn.rank}'s connection"
    if conn.peer_pid is not None and pid != conn.peer_pid:
        return f"HELLO for rank {rank} says pid {pid}, but pid {conn.peer_pid} connected"
    held = rank_conn.get(rank)
    if held is not None and held is not conn and not held.closed:
        return f"HELLO for rank {rank}, which pid {held.peer_pid} already holds"
    world = next((i.world_size for i in ranks.values() if i.world_size is not None), None)
    if world is not None:
        if rank >= world:
            return f"HELLO for rank {rank}, outside this job's world of {world}"
        if body.get("world_size") is not None and body["world_size"] != world:
            return f"HELLO for rank {rank} says world_size {body['world_size']}, not {world}"
    shards = next((i.num_shards for i in ranks.values()), None)
    if shards is not None and (body.get("num_shards") or 1) != shards:
        return f"HELLO for rank {rank} says num_shards {body.get('num_shards') or 1}, not {shards}"
    return None


class Server:
    """The listening socket at ``path`` (0600), accepting only this user's processes."""

    def __init__(self, path: Path, log: Log = _stderr):
        self.path = path
        self._log = _quiet(log)
        self.uid = os.geteuid()
        if path.exists() or path.is_symlink():
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(str(path))
        # bind() gives the socket 0777 minus the umask. Its directory is 0700 (the run
        # directory, or a mkdtemp one), so nobody else can reach it before the chmod.
        os.chmod(path, 0o600)
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
            try:
                pid, uid, _ = peer_credentials(sock)
            except OSError as e:
                self._log(f"refused a connection: no peer credentials ({e})")
                sock.close()
                continue
            if uid != self.uid:
                self._log(f"refused a connection from pid {pid}: uid {uid} is not this "
                          f"supervisor's user (uid {self.uid})")
                sock.close()
                continue
            sock.setblocking(False)
            conns.append(Connection(sock, pid, self._log))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
