"""A published snapshot's shard fetched from another node's supervisor (cluster/transfer.py):
a real snapshot written through libjitc.so and published on "node A" arrives on "node B"
bit for bit, private; and a hostile or broken peer gets nothing and leaves nothing: a
wrong token, paths outside the snapshots (``..``, absolute, symlinks, done records, the
event log), a corrupted stripe, a manifest other than the one expected, a response cut
short or stalled."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.snapshot.conftest import (_env, bitwise_equal, expected_tensors, reseal,
                                     snapshot_lib, writer_cmd)  # noqa: F401 (a fixture)

from jitc.snapshot import layout
from jitc.snapshot.loader import load
from jitc.snapshot.manifest import publish
from jitc.supervisor.cluster import transfer as T

SNAP = "snap-a0-s5-0"
K = 3
TOKEN = b"t" * 32


@pytest.fixture(scope="module")
def template(snapshot_lib, tmp_path_factory) -> Path:
    """A root holding SNAP (3 stripes, published) and a two-shard snapshot with its index."""
    root = tmp_path_factory.mktemp("template")
    jobs = [(root / SNAP, 0), (root / "snap-a1-s9-0" / "shard-0", 1),
            (root / "snap-a1-s9-0" / "shard-1", 2)]
    for d, seed in jobs:
        p = subprocess.run(writer_cmd(d, K, range(K), 5 if seed == 0 else 9, seed),
                           env=_env(snapshot_lib), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        publish(d)
    multi = root / "snap-a1-s9-0"
    layout.write_index(multi, {s: multi / f"shard-{s}" / layout.MANIFEST for s in (0, 1)}, 2)
    return root


@pytest.fixture
def nodes(template, tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "A", tmp_path / "B"
    shutil.copytree(template, a)
    b.mkdir(mode=0o700)
    return a, b


@pytest.fixture
def server(nodes):
    with T.FileServer(nodes[0], TOKEN) as srv:
        yield srv


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_loads_as(manifest_dir: Path, seed: int, step: int) -> None:
    snap = load(manifest_dir)
    assert snap.step == step
    exp = expected_tensors(seed)
    assert list(snap.tensors) == list(exp)
    assert all(bitwise_equal(snap.tensors[n], t) for n, t in exp.items())


def fails(match: str, fn, *args, **kw) -> str:
    with pytest.raises(T.TransferError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# -- what arrives ---------------------------------------------------------------------
def test_fetch_is_a_verified_private_copy(nodes, server):
    a, b = nodes
    got = T.fetch_shard(server.address, TOKEN, b, SNAP, sha(a / SNAP / layout.MANIFEST))
    assert (got.files, got.kept) == (K + 1, 0)
    assert got.bytes == sum(p.stat().st_size for p in (b / SNAP).iterdir())
    assert_loads_as(b / SNAP, seed=0, step=5)
    assert sorted(os.listdir(b / SNAP)) == sorted(
        [layout.MANIFEST] + [layout.stripe_file(j, K) for j in range(K)])
    assert (b / SNAP).stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in (b / SNAP).iterdir()} == {0o600}
    again = T.fetch_shard(server.address, TOKEN, b, SNAP, None)
    assert (again.files, again.kept) == (1, K)      # only the manifest crosses again


def test_two_shards_and_their_index(nodes, server):
    a, b = nodes
    multi = "snap-a1-s9-0"
    for s in (0, 1):
        T.fetch_shard(server.address, TOKEN, b, f"{multi}/shard-{s}", None)
    T.fetch_index(server.address, TOKEN, b, multi, sha(a / multi / layout.INDEX))
    assert (b / multi).stat().st_mode & 0o777 == 0o700
    for s in (0, 1):
        assert_loads_as(layout.resume_manifest(b / multi, s, 2).parent, seed=s + 1, step=9)


# -- who may ask, and for what ------------------------------------------------------------
def raw_get(address, token: bytes, rel: str) -> dict | None:
    """The server's answer header to a request for ``rel`` (no client-side checks)."""
    with socket.create_connection(address, timeout=5) as s:
        nonce = s.recv(T.NONCE_BYTES, socket.MSG_WAITALL)
        req = json.dumps({"op": "get", "path": rel, "mac": T._mac(token, nonce, rel)}).encode()
        s.sendall(struct.pack("!I", len(req)) + req)
        head = s.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return None
        return json.loads(s.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL))


def test_wrong_token_gets_nothing_and_nothing_is_written(nodes, server):
    _, b = nodes
    fails("closed the connection without answering", T.fetch_shard, server.address,
          b"x" * 32, b, SNAP, None)
    assert raw_get(server.address, b"y" * 32, f"{SNAP}/{layout.MANIFEST}") is None
    assert files_under(b) == [] and server.refused == 2
    assert raw_get(server.address, TOKEN, f"{SNAP}/{layout.MANIFEST}")["size"] > 0


@pytest.mark.parametrize("rel", [
    "../A/" + SNAP + "/manifest.json", "/etc/passwd", f"{SNAP}/../{SNAP}/manifest.json",
    f"{SNAP}/./manifest.json", f"{SNAP}//manifest.json", f"{SNAP}/stripe-0-of-3.done",
    "events.jsonl", f"{SNAP}/events.jsonl", "supervisor.sock", f"{SNAP}/.manifest.json.1."
    + "0" * 32 + ".tmp", "snap-a1-s9-0/shard-01/manifest.json", f"{SNAP}/snapshot.json/x",
    "snap-a1-s9-0/shard-0/snapshot.json", "other/manifest.json", SNAP, ""])
def test_server_serves_only_snapshot_files(nodes, server, rel):
    a, _ = nodes
    (a / "events.jsonl").write_text("{}\n")
    (a / SNAP / "events.jsonl").write_text("{}\n")
    answer = raw_get(server.address, TOKEN, rel)
    assert set(answer) == {"error"} and "\n" not in answer["error"]
    assert T.servable(rel) is None


def test_symlinks_are_not_followed(nodes, server, tmp_path):
    a, b = nodes
    outside = tmp_path / "outside"
    shutil.copytree(a / SNAP, outside)
    (a / "snap-link").symlink_to(outside, target_is_directory=True)
    half = a / "snap-half"
    half.mkdir()
    shutil.copy(a / SNAP / layout.MANIFEST, half / layout.MANIFEST)
    for j in range(K):
        (half / layout.stripe_file(j, K)).symlink_to(outside / layout.stripe_file(j, K))
    (a / "snap-man").mkdir()
    (a / "snap-man" / layout.MANIFEST).symlink_to(outside / layout.MANIFEST)
    for rel in ("snap-link/manifest.json", "snap-half/stripe-0-of-3.safetensors",
                "snap-man/manifest.json"):
        assert "refused: a symlink" in raw_get(server.address, TOKEN, rel)["error"], rel
    for d in ("snap-link", "snap-half", "snap-man"):
        fails("refused", T.fetch_shard, server.address, TOKEN, b, d, None)
    assert files_under(b) == []


def test_unpublished_stripes_are_not_served(nodes, server):
    a, _ = nodes
    (a / SNAP / layout.MANIFEST).unlink()
    answer = raw_get(server.address, TOKEN, f"{SNAP}/{layout.stripe_file(0, K)}")
    assert "not published" in answer["error"]


# -- a peer that lies ---------------------------------------------------------------------
def flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))


def test_corrupted_stripe_keeps_only_what_was_valid(nodes, server):
    a, b = nodes
    (b / SNAP).mkdir(mode=0o700)
    shutil.copy(a / SNAP / layout.stripe_file(0, K), b / SNAP)    # already here, valid
    (b / SNAP / layout.stripe_file(2, K)).write_bytes(b"junk")     # here, not valid
    flip_last_byte(a / SNAP / layout.stripe_file(1, K))
    msg = fails("CRC32C", T.fetch_shard, server.address, TOKEN, b, SNAP, None)
    assert "stripe-1-of-3" in msg and "127.0.0.1" in msg and ".tmp" not in msg
    assert os.listdir(b / SNAP) == [layout.stripe_file(0, K)]


def test_manifest_other_than_expected(nodes, server):
    a, b = nodes
    fails("manifest sha256", T.fetch_shard, server.address, TOKEN, b, SNAP, "ab" * 32)
    assert files_under(b) == []


def test_resealed_manifest_that_the_stripes_contradict(nodes, server):
    a, b = nodes
    m = json.loads((a / SNAP / layout.MANIFEST).read_text())
    m["tensors"] = {("W" if n == "w" else n): t for n, t in m["tensors"].items()}
    reseal(a / SNAP / layout.MANIFEST, m)
    fails("tensor index disagrees", T.fetch_shard, server.address, TOKEN, b, SNAP,
          sha(a / SNAP / layout.MANIFEST))
    assert files_under(b) == []


class FakePeer:
    """Speaks the protocol, serves A's files, but does ``cut(rel, data)`` to stripes:
    returns (declared size, bytes sent, then stall?)."""

    def __init__(self, root: Path, cut):
        self.root, self.cut = root, cut
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.address = self.sock.getsockname()[:2]
        self.stop = threading.Event()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"\0" * T.NONCE_BYTES)
                n = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))[0]
                rel = json.loads(conn.recv(n, socket.MSG_WAITALL))["path"]
                data = (self.root / rel).read_bytes()
                size, sent, stall = (len(data), data, False) if rel.endswith(
                    layout.MANIFEST) else self.cut(data)
                head = json.dumps({"size": size}).encode()
                conn.sendall(struct.pack("!I", len(head)) + head + sent)
                if stall:
                    self.stop.wait(10)

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("cut, match", [
    (lambda d: (len(d), d[:len(d) // 2], False), "closed after"),           # truncated
    (lambda d: (len(d) - 1, d[:-1], False), "manifest says"),               # size lies
    (lambda d: (len(d), d[:len(d) // 2], True), "timed out|out of time"),   # stalls
])
def test_response_cut_short(nodes, cut, match):
    a, b = nodes
    peer = FakePeer(a, cut)
    try:
        t0 = time.monotonic()
        fails(match, T.fetch_shard, peer.address, TOKEN, b, SNAP, None, timeout_s=1.5)
        assert time.monotonic() - t0 < 5
    finally:
        peer.close()
    assert files_under(b) == []


def test_server_closed_mid_transfer(nodes):
    a, b = nodes
    srv = T.FileServer(a, TOKEN)
    srv.start()
    srv.close()
    fails("Connection refused|ECONNREFUSED", T.fetch_shard, srv.address, TOKEN, b, SNAP,
          None, timeout_s=2)
    assert files_under(b) == []
    # a connection in flight is cut by close(): the client sees a short read, not a hang
    srv = T.FileServer(a, TOKEN)
    srv.start()
    with socket.create_connection(srv.address, timeout=5) as s:
        assert len(s.recv(T.NONCE_BYTES, socket.MSG_WAITALL)) == T.NONCE_BYTES
        srv.close()
        assert s.recv(1) == b""


def test_token_too_short_is_refused(nodes):
    with pytest.raises(ValueError):
        T.FileServer(nodes[0], b"short")
    assert hmac.compare_digest(T._mac(TOKEN, b"n", "p"), T._mac(TOKEN, b"n", "p"))
