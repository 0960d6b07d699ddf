"""The rank's end of the supervisor channel, against a fake supervisor that decodes with
jitc.protocol (the Python half of the wire format)."""
from __future__ import annotations

import os
import signal
import struct
import time

from jitc import protocol
from jitc.protocol import Msg

from .conftest import spawn

INIT = "assert lib.jitc_init(1, 0, 2, 0, 1) == 0, ffi.string(lib.jitc_last_error())\n"


def test_hello_progress_goodbye(supervisor) -> None:
    child = spawn(INIT + """
assert lib.jitc_supervised() == 1
for s in range(3):
    lib.jitc_step_begin(s)
    lib.jitc_mark()
    time.sleep(0.25)
lib.jitc_steps_finished(3)
time.sleep(0.25)
assert lib.jitc_shutdown(1) == 0
""", {"JITC_SOCKET": supervisor.path, "JITC_ATTEMPT": "2"})
    supervisor.accept()
    hello = supervisor.expect(Msg.HELLO).body
    assert hello["rank"] == 1 and hello["local_rank"] == 0 and hello["world_size"] == 2
    assert hello["pid"] == child.pid
    assert hello["attempt"] == 2
    assert hello["shard"] == 0 and hello["num_shards"] == 1
    assert isinstance(hello["ts"], float) and abs(hello["ts"] - time.time()) < 30
    supervisor.expect(Msg.GOODBYE)
    goodbye = supervisor.seen[-1].body
    assert goodbye == {"ts": goodbye["ts"], "rank": 1, "completed": 3}
    progress = [m.body for m in supervisor.seen if m.type == Msg.PROGRESS]
    steps = [p["step"] for p in progress]
    assert steps[:3] == [0, 1, 2], steps
    assert progress[-1]["completed"] == 3 and progress[-1]["phase"] == "idle"
    assert progress[1]["phase"] == "forward"
    assert 0.2 < progress[2]["step_time"] < 0.6
    # Nothing after GOODBYE.
    assert supervisor.recv(timeout=5) is None
    child.wait(timeout=10)
    assert child.returncode == 0, child.stderr.read()


def test_query_gets_state_and_release_wakes_waiter(supervisor) -> None:
    child = spawn(INIT + """
lib.jitc_step_begin(7)
t0 = time.monotonic()
cmd = lib.jitc_wait_command(20.0)
print(cmd, time.monotonic() - t0, flush=True)
lib.jitc_shutdown(1)
""", {"JITC_SOCKET": supervisor.path})
    supervisor.accept()
    supervisor.expect(Msg.HELLO)
    assert supervisor.expect(Msg.PROGRESS).body["step"] == 7   # the rank is in step 7 now
    supervisor.send(Msg.QUERY, {})
    state = supervisor.expect(Msg.STATE).body
    assert state["completed"] == 7
    assert state["window_open"] is False
    assert state["usable"] is False      # nothing registered
    assert state["nbytes"] == 0 and state["shard"] == 0
    supervisor.send(Msg.RELEASE, {})
    out, err = child.communicate(timeout=10)
    cmd, waited = out.split()
    assert int(cmd) == 1                 # JITC_CMD_RELEASE
    assert float(waited) < 5.0
    assert child.returncode == 0, err


def test_malformed_records_do_not_crash_the_rank(supervisor) -> None:
    child = spawn(INIT + "print(lib.jitc_wait_command(20.0), flush=True)\nlib.jitc_shutdown(1)\n",
                  {"JITC_SOCKET": supervisor.path})
    supervisor.accept()
    supervisor.expect(Msg.HELLO)
    good = protocol.encode(Msg.QUERY, {})
    supervisor.send_raw(b"")                                  # empty record
    supervisor.send_raw(b"JT")                                # short
    supervisor.send_raw(b"XX" + good[2:])                     # bad magic
    supervisor.send_raw(good[:4] + struct.pack("<I", 99) + good[8:])  # length mismatch
    supervisor.send_raw(protocol.HEADER.pack(b"JT", 1, 64, 5) + b"{nope")   # not JSON
    supervisor.send_raw(protocol.HEADER.pack(b"JT", 1, 64, 2) + b"[]")      # not an object
    supervisor.send_raw(protocol.HEADER.pack(b"JT", 1, 99, 2) + b"{}")      # unknown type
    supervisor.send(Msg.SNAPSHOT, {"id": "bad"})                # missing fields
    bad = supervisor.expect(Msg.SNAPSHOT_DONE).body
    assert bad["ok"] is False and bad["id"] == "bad" and bad["error"]
    supervisor.send(Msg.QUERY, {"unknown_key": [1, {"x": None}]})
    assert supervisor.expect(Msg.STATE).body["completed"] == 0
    supervisor.send(Msg.RELEASE, {})
    out, err = child.communicate(timeout=10)
    assert out.strip() == "1"
    assert child.returncode == 0, err


def test_snapshot_step_mismatch_refused(supervisor, tmp_path) -> None:
    child = spawn(INIT + "lib.jitc_step_begin(4)\nlib.jitc_wait_command(20.0)\nlib.jitc_shutdown(1)\n",
                  {"JITC_SOCKET": supervisor.path})
    supervisor.accept()
    supervisor.expect(Msg.HELLO)
    supervisor.expect(Msg.PROGRESS)
    supervisor.send(Msg.SNAPSHOT, {"id": "s", "dir": str(tmp_path / "s"), "stripes": [0, 1],
                                   "files": ["stripe-0-of-2", "stripe-1-of-2"],
                                   "nstripes": 2, "step": 9})
    done = [supervisor.expect(Msg.SNAPSHOT_DONE).body for _ in range(2)]
    assert [d["stripe"] for d in done] == [0, 1]
    assert all(d["ok"] is False and "step mismatch" in d["error"] and d["step"] == 4 for d in done)
    supervisor.send(Msg.RELEASE, {})
    child.wait(timeout=10)
    assert child.returncode == 0


def test_supervisor_gone_terminates_rank(supervisor) -> None:
    child = spawn(INIT + "print('ready', flush=True)\ntime.sleep(30)\n", {"JITC_SOCKET": supervisor.path})
    supervisor.accept()
    supervisor.expect(Msg.HELLO)
    assert child.stdout.readline().strip() == "ready"
    supervisor.conn.close()
    supervisor.conn = None
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGTERM


def test_shim_only_mode_without_socket() -> None:
    child = spawn(INIT + """
assert lib.jitc_supervised() == 0
assert lib.jitc_step_begin(0) == 0
assert lib.jitc_wait_command(5.0) == 0   # nobody will send RELEASE: no waiting
assert lib.jitc_shutdown(1) == 0
print("ok")
""")
    out, err = child.communicate(timeout=10)
    assert out == "ok\n" and err == ""
    assert child.returncode == 0


def test_unreachable_socket_is_an_error(sockdir) -> None:
    child = spawn("""
t0 = time.monotonic()
rc = lib.jitc_init(0, 0, 1, 0, 1)
print(rc, round(time.monotonic() - t0, 1), ffi.string(lib.jitc_last_error()).decode())
""", {"JITC_SOCKET": os.path.join(sockdir, "nobody")})
    out, _ = child.communicate(timeout=10)
    rc, waited, why = out.split(maxsplit=2)
    assert int(rc) == 6                  # JITC_E_CHANNEL
    assert 1.5 <= float(waited) <= 3.0   # bounded retry (limits::kConnectTimeoutS)
    assert "nobody" in why
