"""The native writer obeys the snapshot timeout the rank was told (JITC_SNAPSHOT_TIMEOUT, set
by the supervisor from --snapshot-timeout), not a bound of its own: a stripe that cannot be
written (its file is a FIFO nobody reads, so open() blocks) is answered ok=false once that
timeout, plus the writer's join grace, has passed. The supervisor waits longer than that
(jitc/limits.py snapshot_wait_s), so the answer reaches it."""
from __future__ import annotations

import os
import time
from pathlib import Path

from jitc import limits
from jitc.protocol import Msg

from .conftest import INIT, register, spawn

CHILD = INIT + register(4096) + """
lib.jitc_step_begin(4)
print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_writer_gives_up_at_the_snapshot_timeout_it_was_told(supervisor, tmp_path: Path):
    told = 1.5
    child = spawn(CHILD, {"JITC_SOCKET": supervisor.path, "JITC_DIR": str(tmp_path),
                          "JITC_SNAPSHOT_TIMEOUT": str(told)})
    try:
        supervisor.accept()
        supervisor.expect(Msg.HELLO)
        pid = int(child.stdout.readline())
        snap = tmp_path / "snap-t"
        snap.mkdir()
        os.mkfifo(snap / f"stripe-0-of-1.safetensors.tmp.{pid}")   # open() for write blocks
        t0 = time.monotonic()
        # No "timeout" in the command: the rank's own limit is the one it was told.
        supervisor.send(Msg.SNAPSHOT, {"id": "t", "dir": str(snap), "stripes": [0],
                                       "files": ["stripe-0-of-1"], "nstripes": 1, "step": 4})
        done = supervisor.expect(Msg.SNAPSHOT_DONE, timeout=20).body
        took = time.monotonic() - t0
        assert done["ok"] is False and "timed out" in done["error"], done
        assert told <= took <= told + limits.SNAPSHOT_JOIN_GRACE_S + 1.0, took
        assert took < told + limits.SNAPSHOT_JOIN_GRACE_S + limits.SNAPSHOT_REPLY_MARGIN_S
    finally:
        child.kill()
        child.wait(timeout=10)
