"""A real ``Supervisor`` without a job: ranks are socketpair connections whose records go
through the supervisor's own read path (``Connection.read`` -> ``protocol.decode`` ->
``Supervisor._handle``), and ``advance`` runs the parts of one loop pass that do not wait
on a process (settle, decide, recovery ticks, restart)."""
from __future__ import annotations

import io
import selectors
import socket
import sys
from pathlib import Path

from jitc import protocol
from jitc.protocol import Msg
from jitc.supervisor import Options, Supervisor
from jitc.supervisor.events import EventLog
from jitc.supervisor.server import Connection, peer_credentials
from jitc.supervisor.state import State


class Harness:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.log = io.StringIO()
        self.now = 0.0
        self.supervisors = 0
        self._new_supervisor()

    def _new_supervisor(self) -> None:
        run_dir = self.tmp / f"run{self.supervisors}"
        self.supervisors += 1
        opts = Options(command=("true",), run_dir=run_dir, lib=Path(sys.executable),
                       standby=False, max_restarts=2)
        run_dir.mkdir(mode=0o700)
        opts.snapshot_root.mkdir(mode=0o700)
        self.sup = Supervisor(opts, stream=self.log, clock=lambda: self.now)
        self.sup.events = EventLog(opts.events_path, self.log, clock=lambda: self.now)
        self.sup.state = State.RUNNING
        self.peers: dict[Connection, socket.socket] = {}

    def connect(self) -> Connection:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.setblocking(False)
        mine.setblocking(False)
        conn = Connection(theirs, peer_credentials(theirs)[0], log=self.sup._say)
        self.sup.sel.register(conn, selectors.EVENT_READ, conn)
        self.peers[conn] = mine
        return conn

    def send(self, conn: Connection, mtype: Msg, **body) -> None:
        self.send_raw(conn, protocol.encode(mtype, body))

    def send_raw(self, conn: Connection, record: bytes) -> None:
        peer = self.peers[conn]
        try:
            peer.send(record)
        except OSError:          # closed by the supervisor (a bad version), or full
            pass
        self.sup._read(conn, self.now)
        self._drain(peer)

    @staticmethod
    def _drain(peer: socket.socket) -> None:
        """Read the supervisor's commands so its sends never find a full socket."""
        while True:
            try:
                if not peer.recv(protocol.MAX_RECORD + 1):
                    return
            except OSError:
                return

    def advance(self, dt: float) -> None:
        """Time passes: what ``_run_once`` does after reading, minus the job's process."""
        self.now += dt
        sup = self.sup
        if sup.state is State.RUNNING:
            sup._check_hang(self.now)
        if sup.state is State.SETTLING and sup._settled(self.now):
            sup._decide(self.now)
        if sup.state is State.RECOVERING:
            outcome = sup.recovery.tick(self.now)
            if outcome is not None:
                sup._after_recovery(outcome, self.now)
        if sup.result is not None:
            self.close()
            self._new_supervisor()
        elif sup.state is State.STARTING:
            # The job was stopped and is restarted: its connections are gone.
            self.disconnect_all()
            sup._goto(State.RUNNING)

    def close(self) -> None:
        self.disconnect_all()
        if self.sup.events is not None:
            self.sup.events.close()

    def disconnect_all(self) -> None:
        for conn, peer in list(self.peers.items()):
            try:
                self.sup.sel.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()
            peer.close()
        self.peers.clear()
