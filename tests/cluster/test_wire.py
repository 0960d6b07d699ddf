"""Reports and commands across nodes: what is sent comes back equal under the receiver's
root, and nothing but the listed dataclasses and plain JSON can be built from the wire."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jitc import failures
from jitc.causes import Cause
from jitc.errors import ProtocolError
from jitc.failures import Severity
from jitc.protocol import Msg
from jitc.supervisor.classify import Failure
from jitc.supervisor.cluster import wire
from jitc.supervisor.planner import commands as C
from jitc.supervisor.planner import reports as R
from jitc.supervisor.state import ExitCode

A, B = Path("/nodeA/run/snapshots"), Path("/srv/b/snapshots")


def across(obj):
    """Sent from node A, read on node B, through JSON text as the store carries it."""
    return wire.decode(json.loads(json.dumps(wire.encode(obj, A))), B)


def test_reports_and_commands_cross_with_their_paths_under_the_receivers_root():
    f = Failure(rank=3, kind=failures.CRASH, ts=1.5, step=7, phase=1, progress=(6, 1, 0),
                extra={"detail": "x"}, severity=Severity.FATAL)
    assert across(R.Failed(f)) == R.Failed(f)
    assert across(R.Hello(2, pid=9, shard=1, num_shards=2, world_size=4)) == \
        R.Hello(2, pid=9, shard=1, num_shards=2, world_size=4)
    done = R.WorkDone(4, {"manifests": {0: A / "snap-a0-s3" / "manifest.json"}, "digests": {0: "ab"}},
                      cause=Cause("write x: ENOSPC", "ENOSPC", "/x"))
    assert across(done) == R.WorkDone(4, {"manifests": {0: B / "snap-a0-s3" / "manifest.json"},
                                          "digests": {0: "ab"}}, cause=done.cause)
    start = C.StartJob(2, A / "snap-a1-s9" / "snapshot.json",
                       (C.Fetch(A / "snap-a1-s9" / "shard-1", "10.0.0.1", 7000, "ff", "00"),))
    assert across(start) == C.StartJob(2, B / "snap-a1-s9" / "snapshot.json",
                                       (C.Fetch(B / "snap-a1-s9" / "shard-1", "10.0.0.1", 7000,
                                                "ff", "00"),))
    assert across(C.Send(1, Msg.SNAPSHOT, {"dir": "x"})) == C.Send(1, Msg.SNAPSHOT, {"dir": "x"})
    assert across(C.Finish(ExitCode.SUCCESS, "finished")) == C.Finish(0, "finished")
    assert across(C.Publish(A / "s", {0: A / "s"}, 4, holders={0: 1})).holders == {0: 1}


def test_a_path_outside_the_root_is_not_sent():
    with pytest.raises(ValueError):
        wire.encode(C.StartJob(0, Path("/etc/passwd")), A)


@pytest.mark.parametrize("value", [
    {"$p": "../../etc"}, {"$p": "/etc/passwd"}, {"$p": "a//b"},
    {"$t": "Popen", "f": {}},                          # not a listed dataclass
    {"$t": "Hello", "f": {"rank": 1, "pid": 2, "__class__": 3}},
    {"$t": "Hello", "f": {}},                          # missing fields
    {"$e": "Severity", "v": "catastrophic"},
    {"$e": "os", "v": "system"},
    {"$k": [[1]]}, {"$m": 3}, {"x": 1}, {},
])
def test_anything_else_is_refused_in_one_line(value):
    with pytest.raises(ProtocolError) as e:
        wire.decode(value, B)
    assert "\n" not in str(e.value)


def test_event_text_naming_the_heads_paths_names_this_nodes():
    fields = {"snapshot": str(A / "snap-a0-s3" / "manifest.json"), "other": "/nodeA/runx",
              "list": [str(A)]}
    assert wire.rebase_text(fields, A, B) == {"snapshot": str(B / "snap-a0-s3" / "manifest.json"),
                                              "other": "/nodeA/runx", "list": [str(B)]}
