"""Issue 13, "Fuzz tests in the suite" (the frame half): random and mutated frames, seeded
and bounded, against both ends of the channel.

- The supervisor: a real ``Supervisor`` (tests/security/_harness.py) reading every frame
  through its own ``Connection.read`` -> ``protocol.decode`` -> ``_handle`` path, with time
  advancing so that failures settle, recovery queries and snapshots, and attempts restart.
  Nothing may raise (``Supervisor.run`` would turn it into "internal error" and kill the
  job), and afterwards a fresh rank is still heard.
- The agent: the real libjitc.so in a real rank process. It must stay alive, answer every
  frame it answers with a record that ``protocol.decode`` accepts, answer a valid QUERY at
  the end, and never write outside its snapshot root.

The counts are printed (``-s`` shows them): frames tried per side.
"""
from __future__ import annotations

import json
import os
import random
import select
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from jitc import protocol
from jitc.protocol import HEADER, Msg
from tests.shim.conftest import INIT, FakeSupervisor, register, spawn

from ._harness import Harness

SUPERVISOR_FRAMES = 30000
AGENT_FRAMES = 20000

# Values that break a field's type, range or finiteness, or the JSON itself when written
# as raw text (Python's json writes and reads Infinity/NaN; strict JSON has neither).
EVIL_VALUES = [None, True, False, 0, -1, 1, 7, 2 ** 31, 2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1,
               10 ** 30, 1.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan"), "",
               "x", "forward", "\u00e9\u4e2d", "\ud800", "a" * 5000, [], [1, 2, 3],
               [float("inf"), 1, 0], [[1]], ["1", 2], {}, {"a": 1}, list(range(100))]
EVIL_TEXT = ["Infinity", "-Infinity", "NaN", "1e999", "-1e999", "1" * 40, "01", "1.",
             ".5", "+1", "0x10", '"\\ud800"', '"\\u0000"', '"\xff"', "[" * 40 + "]" * 40,
             "[" * 5000, "{" * 40, "tru", "nul", '"unterminated', "{}", "[]", '"\\x"']


def _templates(rank: int, world: int, pid: int, rng: random.Random,
               shards: int = 1) -> dict[Msg, dict]:
    step = rng.randrange(0, 20)
    shard = rank % shards          # pipeline stages / shard columns: ranks round-robin
    return {
        Msg.HELLO: dict(rank=rank, local_rank=rank, world_size=world, pid=pid, attempt=0,
                        host="h", shard=shard, num_shards=shards, ts=1.0),
        Msg.PROGRESS: dict(rank=rank, step=step, completed=step, phase=rng.choice(
            ["idle", "forward", "backward", "optimizer", 1]), step_time=0.01, marks=2, ts=1.0),
        Msg.FAILURE: dict(rank=rank, kind=rng.choice(["hang", "exception", "signal", "peer",
                                                      "nccl-error", "exit"]),
                          step=step, phase="forward", detail="d", progress=[step, 1, 0],
                          elapsed=1.0, timeout=0.5, signal="SIGSEGV", error="e", code=3),
        Msg.GOODBYE: dict(rank=rank, completed=step),
        Msg.SNAPSHOT_DONE: dict(id=f"a0-s{step}-0", rank=rank, stripe=rng.randrange(0, 3),
                                nstripes=world, ok=rng.random() < 0.7, step=step,
                                file="stripe-0-of-1.safetensors", bytes=64, crc32c=5,
                                fingerprint="f", error=None),
        Msg.FAULT_INJECTED: dict(rank=rank, kind="crash", step=step, phase="backward"),
        Msg.RESUMED: dict(rank=rank, step=step, manifest="/m"),
        Msg.STATE: dict(rank=rank, completed=step, window_open=False, usable=True,
                        fingerprint="f", nbytes=4096, shard=shard),
        Msg.QUERY: {},
        Msg.SNAPSHOT: dict(id="x", dir="/tmp/x", stripes=[0], files=["stripe-0-of-1"],
                           nstripes=1, step=step),
        Msg.RELEASE: {},
    }


def _raw(mtype: int, payload: bytes, version: int = 1) -> bytes:
    return HEADER.pack(b"JT", version, mtype, len(payload)) + payload


def _dumps(body: dict) -> bytes:
    # allow_nan: Infinity/NaN go out as Python writes them; the receiver must refuse them.
    return json.dumps(body, separators=(",", ":")).encode("utf-8", "surrogatepass")


def mutate(rng: random.Random, mtype: Msg, body: dict, *, keep_version: bool = False) -> bytes:
    """One malformed (or, now and then, valid) record built from a valid ``body``."""
    body = dict(body)
    op = rng.randrange(9)
    if op == 0 and body:                                      # a field's value broken
        body[rng.choice(list(body))] = rng.choice(EVIL_VALUES)
    elif op == 1 and body:                                    # a field missing
        del body[rng.choice(list(body))]
    elif op == 2:                                             # unknown key (must be fine)
        body[rng.choice(["zz", "extra", "rank2"])] = rng.choice(EVIL_VALUES)
    elif op == 3 and body:                                    # raw text in place of a value
        key = rng.choice(list(body))
        body[key] = "\x00MARK\x00"
        payload = _dumps(body).replace(b'"\\u0000MARK\\u0000"', rng.choice(EVIL_TEXT).encode(
            "utf-8", "surrogateescape"))
        return _raw(int(mtype), payload)
    elif op == 4:                                             # bytes flipped anywhere
        rec = bytearray(_raw(int(mtype), _dumps(body)))
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(rec))
            rec[i] = rng.randrange(256)
        if keep_version:
            rec[2] = 1
        return bytes(rec)
    elif op == 5:                                             # cut short, or trailing bytes
        rec = _raw(int(mtype), _dumps(body))
        if rng.random() < 0.5:
            return rec[:rng.randrange(len(rec))]
        return rec + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    elif op == 6:                                             # header lies
        payload = _dumps(body)
        length = rng.choice([0, len(payload) - 1, len(payload) + 1, 2 ** 32 - 1])
        magic = rng.choice([b"JT", b"TJ", b"\0\0"])
        version = 1 if keep_version else rng.choice([0, 1, 2, 255])
        return HEADER.pack(magic, version, rng.choice([int(mtype), 0, 9, 63, 67, 255]),
                           length) + payload
    elif op == 7:                                             # not a JSON object at all
        payload = rng.choice([b"", b"[]", b"null", b"1", b'"s"', b"\xff\xfe{}", b"{,}",
                              b'{"a":1}{"b":2}', b'{"a":1,"a":2}',
                              b'{"k":' * 3000 + b"1" + b"}" * 3000,
                              bytes(rng.randrange(256) for _ in range(rng.randrange(64)))])
        return _raw(int(mtype), payload)
    elif op == 8:                                             # oversized
        pad = "p" * rng.choice([protocol.MAX_PAYLOAD - 200, protocol.MAX_PAYLOAD + 10])
        body["pad"] = pad
    return _raw(int(mtype), _dumps(body))


# -- the supervisor ----------------------------------------------------------------------

# (world, shards): data parallel, and pipelines whose lost stages go to CheckFree planning.
LAYOUTS = [(3, 1), (4, 2), (3, 3)]


@pytest.mark.parametrize("world,shards", LAYOUTS)
def test_fuzz_supervisor_decode_and_handle(tmp_path: Path, world: int, shards: int) -> None:
    rng = random.Random(1301 + 7 * world + shards)
    h = Harness(tmp_path)
    conns: dict[int, object] = {}
    counts = {"frames": 0, "valid": 0, "dropped": 0}

    def rank_conn(r: int):
        c = conns.get(r)
        if c is None or c.closed:
            c = conns[r] = h.connect()
            h.send(c, Msg.HELLO, **_templates(r, world, c.peer_pid, rng, shards)[Msg.HELLO])
        return c

    t0 = time.monotonic()
    for i in range(SUPERVISOR_FRAMES // len(LAYOUTS)):
        supervisor_before = h.sup
        r = rng.randrange(world)
        conn = rank_conn(r) if rng.random() < 0.9 else h.connect()   # or a stranger
        mtype = rng.choice(list(Msg))
        body = _templates(r, world, conn.peer_pid, rng, shards)[mtype]
        rec = h.sup.planner.recovery
        if mtype is Msg.SNAPSHOT_DONE and rec is not None and getattr(rec, "_id", None):
            body.update(id=rec._id, stripe=rng.randrange(2))   # answers the real request
        if rng.random() < 0.25:
            record = protocol.encode(mtype, body)             # valid: drive the machine on
            counts["valid"] += 1
        else:
            record = mutate(rng, mtype, body)
        before = conn.dropped
        h.send_raw(conn, record)
        counts["dropped"] += conn.dropped - before
        counts["frames"] += 1
        if rng.random() < 0.05:
            h.advance(rng.choice([0.01, 0.2, 0.5, 2.5, 200.0]))
        if h.sup is not supervisor_before or not h.peers:
            conns.clear()                   # a restart or a new supervisor: reconnect
    elapsed = time.monotonic() - t0
    print(f"\nsupervisor fuzz (world {world}, {shards} shard(s)): {counts['frames']} frames ({counts['valid']} valid, "
          f"{counts['dropped']} dropped with a log line or counted), {h.supervisors} "
          f"supervisor(s), {elapsed:.1f}s")
    assert counts["dropped"] > counts["frames"] // 3
    # Still listening: a fresh rank is heard.
    h.close()
    (tmp_path / "after").mkdir()
    h = Harness(tmp_path / "after")
    c = h.connect()
    h.send(c, Msg.HELLO, rank=0, pid=c.peer_pid, world_size=1)
    h.send(c, Msg.PROGRESS, rank=0, step=4, completed=4, phase="forward")
    assert h.sup.planner.ranks[0].step == 4 and h.sup.planner.ranks[0].phase == 1


def test_decode_accepts_exactly_well_typed_bodies() -> None:
    """What decode lets through satisfies its schema; what it refuses is a ProtocolError,
    never another exception."""
    rng = random.Random(7)
    for _ in range(4000):
        mtype = rng.choice(list(Msg))
        record = mutate(rng, mtype, _templates(1, 4, 100, rng)[mtype])
        try:
            msg = protocol.decode(record)
        except protocol.ProtocolError:
            continue
        protocol.validate(msg.type, msg.body)
        text = json.dumps(msg.body, allow_nan=False)          # finite, serialisable
        assert json.loads(text) == msg.body


# -- the agent ---------------------------------------------------------------------------

AGENT_RANK = INIT + register(256) + """
lib.jitc_step_begin(2)
lib.jitc_steps_finished(2)
print("ready", flush=True)
time.sleep(300)
"""


@pytest.fixture
def fake_supervisor():
    d = tempfile.mkdtemp(prefix="jitc-", dir="/tmp")
    sup = FakeSupervisor(os.path.join(d, "s.sock"))
    yield sup
    sup.close()
    shutil.rmtree(d, ignore_errors=True)


def _snapshot_dirs(root: Path, outside: Path, elsewhere: Path, rng: random.Random) -> str:
    return rng.choice([
        str(root / f"snap-f{rng.randrange(4)}"), str(root / "a" / "b"),
        str(outside / "x"), f"{root}/../outside/y", f"{root}/s/../../outside/z",
        str(root / "link" / "w"), str(root / "link"), str(root), f"{root}x/s", "rel/dir",
        str(elsewhere), "", "/", "//" + str(outside).lstrip("/"),
        str(root) + "/\u00e9", str(root / ("n" * 300)),
    ])


def test_fuzz_agent_in_a_real_rank(fake_supervisor, tmp_path: Path) -> None:
    rng = random.Random(2602)
    root, outside = tmp_path / "root", tmp_path / "outside"
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"   # beside the test's dir
    root.mkdir(mode=0o700)
    outside.mkdir(mode=0o700)
    (root / "link").symlink_to(outside)
    sup = fake_supervisor
    child = spawn(AGENT_RANK, {"JITC_SOCKET": sup.path, "JITC_DIR": str(root)}, cwd=str(tmp_path))
    try:
        sup.accept()
        assert sup.expect(Msg.HELLO).body["rank"] == 0
        assert child.stdout.readline().strip() == "ready"
        conn = sup.conn
        conn.setblocking(False)
        answers = {"n": 0, "written": 0}

        def drain() -> None:
            while True:
                try:
                    rec = conn.recv(protocol.MAX_RECORD + 1)
                except BlockingIOError:                   # nothing queued
                    return
                assert rec, "the rank closed its channel"
                msg = protocol.decode(rec)    # every answer is a well-formed record
                answers["n"] += 1
                if msg.type is Msg.SNAPSHOT_DONE and msg.body["ok"]:
                    answers["written"] += 1

        kinds = [Msg.SNAPSHOT] * 6 + [Msg.QUERY] * 2 + [Msg.RELEASE] + list(Msg)
        t0 = time.monotonic()
        for i in range(AGENT_FRAMES):
            mtype = rng.choice(kinds)
            body = _templates(0, 1, 1, rng)[mtype]
            if mtype is Msg.SNAPSHOT:
                body = dict(id=f"f{i}", dir=_snapshot_dirs(root, outside, elsewhere, rng),
                            stripes=rng.choice([[0], [0], [1], [0, 0], [-1], [2 ** 40]]),
                            files=rng.choice([["stripe-0-of-1"]] * 4 + [
                                ["../x"], ["a/b"], [""], ["n" * 300], [7], ["s", "s"], []]),
                            nstripes=rng.choice([1, 1, 2, 0, -3, 2 ** 40]),
                            step=rng.choice([2, 2, 3, 2.0, 2.5]))
                if "timeout" not in body and rng.random() < 0.2:
                    body["timeout"] = rng.choice([5, 0, -1, 1e300])
            if rng.random() < 0.2:
                record = _raw(int(mtype), _dumps(body))        # as generated (may be valid)
            else:
                record = mutate(rng, mtype, body, keep_version=True)
            if len(record) > 100_000:
                record = record[:100_000]
            deadline = time.monotonic() + 10
            while True:
                try:
                    conn.send(record)
                    break
                except BlockingIOError:           # the agent is behind: let it catch up
                    assert time.monotonic() < deadline, "the agent stopped reading"
                    drain()
                    select.select([conn], [conn], [], 0.1)
            if i % 8 == 0:
                drain()
        elapsed = time.monotonic() - t0
        assert child.poll() is None, child.communicate()[1][-2000:]
        # Alive and answering.
        conn.setblocking(True)
        sup.send(Msg.QUERY, {})
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "no STATE after the fuzz"
            msg = sup.recv(timeout=20)
            assert msg is not None, "the rank closed its channel"
            if msg.type is Msg.STATE:
                break
        assert msg.body["completed"] == 2
        print(f"\nagent fuzz: {AGENT_FRAMES} frames, {answers['n']} answers decoded "
              f"({answers['written']} stripes written inside the root), {elapsed:.1f}s")
        assert answers["written"] > 0          # the valid commands did get through
    finally:
        child.kill()
        child.wait()
    # Nothing outside the root: not beside it, not through the link, not elsewhere.
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root"]
    assert not elsewhere.exists() and not Path(f"{root}x").exists()
    for p in root.rglob("*"):
        assert not p.is_symlink() or p == root / "link", p
