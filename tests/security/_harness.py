"""A real ``Supervisor`` without a job: ranks are socketpair connections whose records go
through the supervisor's own read path (``Connection.read`` -> ``protocol.decode`` ->
``Supervisor._handle`` -> the planner), and ``advance`` runs the parts of one loop pass that
do not wait on a process: the planner's tick, its slow work (done at once, on this disk),
restarts (a job "started" is a new set of connections)."""
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
from jitc.supervisor import work
from jitc.supervisor.planner import reports as R
from jitc.supervisor.server import Connection, peer_credentials


class _SyncWorker:
    """The worker thread's part, done when the harness advances."""

    def __init__(self, root: Path):
        self.root, self.jobs = root, []

    def submit(self, w) -> None:
        self.jobs.append(w)

    def drain(self):
        jobs, self.jobs = self.jobs, []
        return [work.attempt(w.job, w.token, self.root) for w in jobs]


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
        self.sup.worker = _SyncWorker(opts.snapshot_root.resolve())
        self.sup._start_job = self._started          # no process: new connections come
        self.peers: dict[Connection, socket.socket] = {}
        self.sup._carry_out(self.sup.planner.begin(), self.now)

    def _started(self, cmd) -> None:
        self.disconnect_all()        # the job was stopped and is restarted: they are gone
        self.sup._feed(R.JobStarted(pid=1), self.now)

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
        for _ in range(8):           # work whose result asks for more work
            done = sup.worker.drain()
            if not done:
                break
            for d in done:
                sup._feed(d, self.now)
        if sup.result is None:
            sup._carry_out(sup.planner.tick(self.now), self.now)
        if sup.result is not None:
            self.close()
            self._new_supervisor()

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
