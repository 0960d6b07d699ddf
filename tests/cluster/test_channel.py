"""The supervisors' exchange through a real TCPStore on loopback, all ends in this process."""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import pytest
from torch import distributed as dist

from jitc.errors import JitcError, UsageError
from jitc.supervisor.cluster.channel import HEAD, Channel
from jitc.supervisor.cluster.topology import Topology

from .nodes import free_ports

FAST = {"op_timeout_s": 2.0, "heartbeat_s": 0.1}


def free_port() -> int:
    return free_ports(1)        # below the ephemeral range: nothing takes it meanwhile


def topology(port: int, backend: str = "static", node_rank: int | None = 0,
             nnodes: int = 2) -> Topology:
    return Topology(nnodes=nnodes, node_rank=node_rank, backend=backend, rdzv_host="127.0.0.1",
                    rdzv_port=port - 1, store_host="127.0.0.1", store_port=port, job_id="j1")


@pytest.fixture
def opened():
    channels: list[Channel] = []

    def open_(topo: Topology, **kw) -> Channel:
        ch = Channel.open(topo, **{**FAST, **kw})
        channels.append(ch)
        return ch
    yield open_
    for ch in reversed(channels):      # members first: the head's store goes last
        ch.close()


def wait_messages(ch: Channel, n: int, timeout_s: float = 3.0) -> list[dict]:
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        select.select([ch], [], [], deadline - time.monotonic())
        got += ch.drain()
    return got


def test_messages_go_both_ways_in_order_and_quickly(opened):
    port = free_port()
    head = opened(topology(port))
    member = opened(topology(port, node_rank=1))
    assert (head.is_head, head.node, member.is_head, member.node) == (True, 0, False, 1)
    for i in range(20):
        member.send(HEAD, {"i": i, "text": "é", "x": [1.5, None, True]})
    assert wait_messages(head, 20) == [{"i": i, "text": "é", "x": [1.5, None, True]}
                                       for i in range(20)]
    head.send(1, {"k": "welcome"})
    head.send(1, {"k": "c", "v": 2})
    assert wait_messages(member, 2) == [{"k": "welcome"}, {"k": "c", "v": 2}]
    worst = 0.0
    for _ in range(10):
        began = time.monotonic()
        member.send(HEAD, {"t": began})
        assert len(wait_messages(head, 1)) == 1
        worst = max(worst, time.monotonic() - began)
    assert worst < 0.1, worst


def test_heartbeats_advance_and_the_head_reads_every_node(opened):
    port = free_port()
    head = opened(topology(port))
    opened(topology(port, node_rank=1))
    time.sleep(0.35)
    first = head.beats()
    time.sleep(0.4)
    later = head.beats()
    assert set(first) == set(later) == {0, 1}
    assert later[0] > first[0] and later[1] > first[1]


def test_c10d_members_get_distinct_ids_and_reach_the_head(opened):
    port = free_port()
    head = opened(topology(port, backend="c10d", node_rank=None, nnodes=3))
    one = opened(topology(port, backend="c10d", node_rank=None, nnodes=3))
    two = opened(topology(port, backend="c10d", node_rank=None, nnodes=3))
    assert (head.is_head, head.node) == (True, 0)
    assert not one.is_head and not two.is_head and {one.node, two.node} == {1, 2}
    one.send(HEAD, {"from": one.node})
    two.send(HEAD, {"from": two.node})
    assert sorted(m["from"] for m in wait_messages(head, 2)) == [1, 2]
    head.send(two.node, {"to": two.node})
    assert wait_messages(two, 1) == [{"to": two.node}]
    time.sleep(0.3)
    assert set(head.beats()) == {0, 1, 2}


def test_garbage_on_the_queue_is_dropped_and_counted_and_the_channel_goes_on(opened):
    port = free_port()
    head = opened(topology(port))
    raw = dist.PrefixStore("jitc/j1", dist.TCPStore("127.0.0.1", port, is_master=False,
                                                    timeout=timedelta(seconds=2)))
    for junk in (b"not json", b"[1, 2]", b"\xff\xfe", b'{"a": 1, "a": 2}', b'{"n": NaN}',
                 b"[" * 100_000):
        raw.queue_push("q/0", junk)
    raw.queue_push("q/0", b'{"ok": true}')
    assert wait_messages(head, 1) == [{"ok": True}]
    assert head.dropped == 6 and head.lost is None


def test_a_member_sees_the_head_go_within_seconds(opened):
    port = free_port()
    head = Channel.open(topology(port), **FAST)
    member = opened(topology(port, node_rank=1))
    began = time.monotonic()
    head.close()
    select.select([member], [], [], 5.0)
    assert member.lost is not None and time.monotonic() - began < 5.0
    assert "127.0.0.1:" in member.lost and "\n" not in member.lost


def test_close_is_prompt(opened):
    port = free_port()
    head = Channel.open(topology(port), **FAST)
    member = Channel.open(topology(port, node_rank=1), **FAST)
    began = time.monotonic()
    member.close()
    head.close()
    assert time.monotonic() - began < 1.0


def test_no_head_within_the_connect_timeout_is_one_line_naming_the_store():
    port = free_port()
    began = time.monotonic()
    with pytest.raises(JitcError) as e:
        Channel.open(topology(port, node_rank=1), connect_timeout_s=0.5, **FAST)
    assert time.monotonic() - began < 2.0
    assert f"127.0.0.1:{port}" in str(e.value) and "\n" not in str(e.value)


def test_a_member_waits_for_a_head_that_starts_later(opened):
    port = free_port()
    late = threading.Timer(0.5, lambda: opened(topology(port)))
    late.start()
    member = opened(topology(port, node_rank=1), connect_timeout_s=5.0)
    late.join()
    assert member.node == 1 and member.lost is None


def test_a_second_static_node_0_is_refused(opened):
    port = free_port()
    opened(topology(port))
    with pytest.raises(UsageError) as e:
        Channel.open(topology(port), **FAST)
    assert "address in use" in str(e.value) and "\n" not in str(e.value)


def test_what_the_receiver_would_drop_fails_at_the_sender(opened):
    port = free_port()
    head = opened(topology(port))
    with pytest.raises(ValueError):
        head.send(0, {"x": float("nan")})
    with pytest.raises(TypeError):
        head.send(0, [1])
    with pytest.raises(ValueError):
        head.send("elsewhere", {})


def test_a_listener_that_is_no_store_is_one_line_within_the_operation_timeout():
    with socket.create_server(("127.0.0.1", 0)) as silent:      # accepts, never answers
        port = silent.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(JitcError) as e:
            Channel.open(topology(port, node_rank=1), connect_timeout_s=1.0,
                         op_timeout_s=1.0, heartbeat_s=0.1)
    assert time.monotonic() - began < 3.0
    assert f"127.0.0.1:{port}" in str(e.value) and "\n" not in str(e.value)


HEAD_PROCESS = textwrap.dedent("""
    import sys, time
    from jitc.supervisor.cluster.channel import Channel
    from jitc.supervisor.cluster.topology import Topology
    port = int(sys.argv[1])
    ch = Channel.open(Topology(2, 0, "static", "127.0.0.1", port - 1, "127.0.0.1", port, "j1"),
                      op_timeout_s=1.0, heartbeat_s=0.1)
    print("up", flush=True)
    if sys.argv[2] == "wait":
        time.sleep(30)
    member = Channel.open(Topology(2, 1, "static", "127.0.0.1", port - 1, "127.0.0.1", port,
                                   "j1"), op_timeout_s=1.0, heartbeat_s=0.1)
    member.send("head", {"bye": True})      # and exit without close(): the atexit hook does
""")


def head_process(port: int, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HEAD_PROCESS, str(port), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stopped_head_is_lost_within_the_operation_timeout_and_close_is_prompt():
    port = free_port()
    head = head_process(port, "wait")
    try:
        assert head.stdout.readline() == "up\n", head.stderr.read()
        member = Channel.open(topology(port, node_rank=1), op_timeout_s=1.0, heartbeat_s=0.1)
        os.kill(head.pid, signal.SIGSTOP)     # connected, silent: every TCPStore call hangs
        began = time.monotonic()
        select.select([member], [], [], 5.0)
        assert member.lost is not None and "nothing came for 1 s" in member.lost
        assert time.monotonic() - began < 2.0
        began = time.monotonic()
        member.close()
        assert time.monotonic() - began < 2.0
    finally:
        head.kill()
        os.kill(head.pid, signal.SIGCONT)
        head.communicate(timeout=10)


def test_a_process_that_exits_without_closing_its_channels_exits_cleanly_and_quietly():
    head = head_process(free_port(), "exit")
    out, err = head.communicate(timeout=60)
    assert (head.returncode, out, err) == (0, "up\n", "")
