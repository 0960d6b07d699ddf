"""Issue 13: the supervisor takes reports only from its own user's processes, a HELLO
claims only the process that connected, and one malformed frame ("One frame kills a job":
a FAILURE whose progress holds Infinity) is dropped instead of ending the supervisor."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jitc import protocol
from jitc.protocol import Msg
from jitc.supervisor.server import Server
from tests.supervisor.conftest import child_env, supervise_argv


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_connection_from_another_uid_is_refused(capfd) -> None:
    d = tempfile.mkdtemp(prefix="jitc-", dir="/tmp")
    os.chmod(d, 0o755)
    server = Server(Path(d) / "s.sock")
    # Past the file mode (0600): the credential check is the lock that holds regardless.
    os.chmod(server.path, 0o666)
    pid = os.fork()
    if pid == 0:                                   # the other user's client
        code = 3
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(str(server.path))
            s.send(protocol.encode(Msg.HELLO, {"rank": 0, "pid": os.getpid(), "world_size": 1}))
            s.settimeout(10)
            code = 0 if s.recv(64) == b"" else 1   # EOF: refused
        finally:
            os._exit(code)
    conns = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conns += server.accept()
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the other user's client never saw its connection closed")
    try:
        assert conns == [], "a connection from another uid was accepted"
        err = capfd.readouterr().err
        assert "refused a connection" in err and "uid 65534" in err
        # This user's process is accepted, and its pid is what a HELLO must say.
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(str(server.path))
        (conn,) = server.accept()
        assert conn.peer_pid == os.getpid()
        c.close()
        conn.close()
    finally:
        server.close()


def test_hello_must_match_the_connection(tmp_path: Path) -> None:
    from ._harness import Harness
    h = Harness(tmp_path)
    a, b = h.connect(), h.connect()
    h.send(a, Msg.HELLO, rank=0, pid=os.getpid() + 1, world_size=2)    # not the peer's pid
    assert h.sup.planner.ranks == {}
    h.send(a, Msg.HELLO, rank=0, pid=os.getpid(), world_size=2)
    assert h.sup.rank_conn[0] is a
    h.send(b, Msg.HELLO, rank=0, pid=os.getpid(), world_size=2)        # rank 0 is taken
    assert h.sup.rank_conn[0] is a and b.rank is None
    h.send(a, Msg.HELLO, rank=1, pid=os.getpid(), world_size=2)        # second HELLO
    assert a.rank == 0 and 1 not in h.sup.planner.ranks
    h.send(b, Msg.HELLO, rank=2, pid=os.getpid(), world_size=2)        # outside the world
    h.send(b, Msg.HELLO, rank=1, pid=os.getpid(), world_size=4)        # another world
    assert set(h.sup.planner.ranks) == {0} and b.rank is None
    h.send(b, Msg.HELLO, rank=1, pid=os.getpid(), world_size=2)
    assert h.sup.rank_conn[1] is b
    # A report naming another rank than the connection's is not believed.
    h.send(b, Msg.FAILURE, rank=0, kind="exception", step=1)
    assert h.sup.planner.failures == []
    log = h.log.getvalue()
    for words in ("says pid", "already holds", "second HELLO", "outside", "world_size 4",
                  "names rank 0"):
        assert words in log, (words, log)


@pytest.mark.parametrize("payload", [
    b'{"rank":0,"kind":"hang","step":3,"progress":[Infinity,1,0]}',
    b'{"rank":0,"kind":"hang","step":3,"progress":[NaN,1,0]}',
    b'{"rank":0,"kind":"hang","step":3,"progress":[1e999,1,0]}',
    b'{"rank":0,"kind":"hang","step":3,"progress":[1,2,3],"elapsed":-Infinity}',
    b'{"rank":0,"kind":"hang","step":"3"}',
    b'{"rank":0,"kind":["hang"],"step":3}',
    b'{"rank":0,"kind":"hang","step":100000000000000000000000000000}',
    b'{"rank":0,"kind":"hang","kind":"exit"}',
])
def test_malformed_failure_is_dropped_not_fatal(tmp_path: Path, payload: bytes) -> None:
    from ._harness import Harness
    h = Harness(tmp_path)
    a = h.connect()
    h.send(a, Msg.HELLO, rank=0, pid=os.getpid(), world_size=1)
    h.send_raw(a, protocol.HEADER.pack(b"JT", 1, int(Msg.FAILURE), len(payload)) + payload)
    assert h.sup.planner.failures == [] and h.sup.result is None
    assert h.log.getvalue().count("dropped a record from rank 0") == 1, h.log.getvalue()
    h.send(a, Msg.FAILURE, rank=0, kind="hang", step=3, progress=[3, 1, 0])   # still heard
    assert [f.progress for f in h.sup.planner.failures] == [(3, 1, 0)]


INFINITY_JOB = """
import os, socket, struct, sys, time
sys.path.insert(0, {repo!r})
from jitc import protocol
from jitc.protocol import Msg
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(os.environ["JITC_SOCKET"])
s.send(protocol.encode(Msg.HELLO, dict(rank=0, local_rank=0, world_size=1, pid=os.getpid(),
                                       attempt=0, host="h", shard=0, num_shards=1)))
bad = b'{{"rank":0,"kind":"hang","step":2,"phase":"forward","progress":[Infinity,1,0]}}'
s.send(protocol.HEADER.pack(b"JT", 1, 3, len(bad)) + bad)
for step in range(5):
    s.send(protocol.encode(Msg.PROGRESS, dict(rank=0, step=step, completed=step, phase=1)))
    time.sleep(0.05)
s.send(protocol.encode(Msg.GOODBYE, dict(rank=0, completed=5)))
s.close()
"""


def test_infinity_in_a_failure_does_not_kill_a_healthy_job(tmp_path: Path) -> None:
    """The audit's frame, against a real ``jitc supervise``: the job finishes, exit 0."""
    from tests.supervisor.conftest import REPO
    job = [sys.executable, "-c", INFINITY_JOB.format(repo=str(REPO))]
    proc = subprocess.run(supervise_argv(tmp_path / "run", "--no-standby", "--", *job),
                          env=child_env(), capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "dropped a record from pid" in proc.stderr and "Infinity" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve a socket as another user")
def test_rank_refuses_a_socket_served_by_another_user(tmp_path: Path) -> None:
    """The audit's swapped socket, from the rank's side: another user's process listens at
    JITC_SOCKET; the rank must not connect to it (it would obey its SNAPSHOT commands and
    report to it), and jitc_init fails saying why."""
    from tests.shim.conftest import spawn
    d = tempfile.mkdtemp(prefix="jitc-", dir="/tmp")
    os.chown(d, NOBODY, NOBODY)
    path = os.path.join(d, "jitc.sock")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the other user's "supervisor"
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            listener.bind(path)
            listener.listen(8)
            os.write(ready_w, b"1")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        child = spawn("rc = lib.jitc_init(0, 0, 1, 0, 1)\n"
                      "print(rc, ffi.string(lib.jitc_last_error()).decode(), flush=True)\n",
                      {"JITC_SOCKET": path, "JITC_DIR": str(tmp_path)})
        out, err = child.communicate(timeout=30)
        rc, _, why = out.strip().partition(" ")
        assert rc != "0", out
        assert "served by uid 65534" in why, out + err
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def test_a_dropped_frame_with_stderr_closed_is_still_only_dropped(tmp_path: Path) -> None:
    from ._harness import Harness
    h = Harness(tmp_path)
    h.log.close()                                  # the supervisor's stderr is gone
    a = h.connect()
    h.send(a, Msg.HELLO, rank=0, pid=a.peer_pid, world_size=1)
    h.send_raw(a, protocol.HEADER.pack(b"JT", 1, int(Msg.FAILURE), 5) + b"{nope")
    assert a.dropped == 1 and h.sup.planner.failures == []
