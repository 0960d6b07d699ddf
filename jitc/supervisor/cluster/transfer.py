"""A published snapshot's files fetched from the node that holds them (no shared filesystem).

Each node's supervisor keeps its own snapshot root. A shard published on node A must be a
verified local copy on node B before B's ranks resume from it: A's supervisor runs a
``FileServer`` over its root, B's calls ``fetch_shard`` (then ``fetch_index`` for a
snapshot with several shards, after its shards: the index is what names them).

    FileServer(root, token, host="127.0.0.1", port=0)   .address .start() .close() .refused
    fetch_shard(address, token, root, shard_dir, manifest_sha256, *, timeout_s=60.0) -> Fetched
    fetch_index(address, token, root, snap_dir, sha256=None, *, timeout_s=60.0) -> Fetched
    servable(rel) -> list[str] | None        the path rule, shared by both sides

Wire (one file per TCP connection): the server sends a 32-byte nonce; the client sends one
length-prefixed (4 bytes, big-endian, at most 4 KiB) strict-JSON object ``{"op": "get",
"path": <rel>, "mac": HMAC-SHA256(token, MAC_CONTEXT + nonce + path)}``, so the token never
crosses the wire and a recorded request cannot be replayed; the server answers with a
length-prefixed JSON header, ``{"size": n}`` then exactly n raw bytes (``sendfile``), or
``{"error": "<one line>"}``. A request that does not authenticate is dropped without a word.

What the server serves (``servable``; every name as layout.py spells it): ``<snap>/<file>``
or ``<snap>/shard-<s>/<file>`` below its root, ``<snap>`` a snapshot directory (``snap-*``),
``<file>`` a stripe (only beside a manifest, i.e. published) or the manifest, or the index
directly in ``<snap>``; opened one component at a time with O_NOFOLLOW (a symlink anywhere
is refused), a regular file owned by this user. Never a ``.done`` record, a temporary, the
event log or the socket.

The fetch trusts nothing the peer says: the manifest's sha256 (when the caller knows it)
and the snapshot package's strict manifest reading come first; each stripe is received into
a private temporary in its final directory (tmpfiles.py's pattern, so a killed fetch's are
swept), checked (size, CRC32C as it arrives, header against the manifest) and fsynced before
its rename; the whole set then passes ``verify_files`` before the manifest lands, last, by
rename: until then the directory holds no snapshot a loader would take. On any failure
every file this fetch put there is removed again (files that were there and verified stay),
and a ``TransferError`` says, in one line, the peer, the file and the cause.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import socket
import stat
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import causes, private
from ...errors import CorruptSnapshotError, JitcError, ProtocolError
from ...protocol import loads
from ...snapshot import layout

MAC_CONTEXT = b"jitc-transfer/1\0"
NONCE_BYTES = 32
MAX_REQUEST = 4096             # a request: a path of at most 3 plain names and a MAC
MAX_HEADER = 4096              # a response header
MAX_FILE = 1 << 40             # the largest stripe a server offers
MAX_SMALL = 64 << 20           # the largest manifest or index a client accepts
CHUNK = 4 << 20                # one recv buffer, one write, one CRC call
IO_TIMEOUT_S = 30.0            # any single socket operation, both sides
MAX_CONNECTIONS = 16           # served at once; more are closed at accept
_ACCEPT_POLL_S = 0.5           # how soon the accept loop notices close()
_LEN = struct.Struct("!I")


class TransferError(JitcError):
    """A file could not be fetched from a peer, or what it sent was not the snapshot."""


@dataclass
class Fetched:
    files: int          # files received (stripes, manifest, index)
    bytes: int          # bytes received
    seconds: float
    kept: int = 0       # stripes already here and verifying, not fetched again


def _is_shard_dir(name: str) -> bool:
    n = name[len("shard-"):]
    return (name.startswith("shard-") and n.isascii() and n.isdigit()
            and layout.shard_dir("", int(n), 2).name == name)


def servable(rel: object) -> list[str] | None:
    """The components of ``rel`` if it names a file a peer may fetch (module docstring)."""
    if type(rel) is not str:
        return None
    parts = rel.split("/")
    if not (2 <= len(parts) <= layout.MAX_DEPTH
            and all(layout.is_plain_name(p) and p != "." for p in parts)
            and parts[0].startswith("snap-") and all(_is_shard_dir(p) for p in parts[1:-1])):
        return None
    name = parts[-1]
    ok = (name == layout.MANIFEST or layout.is_stripe_file(name)
          or (name == layout.INDEX and len(parts) == 2))
    return parts if ok else None


def _mac(token: bytes, nonce: bytes, path: str) -> str:
    return hmac.new(token, MAC_CONTEXT + nonce + path.encode(), hashlib.sha256).hexdigest()


def _check_token(token: object) -> bytes:
    if type(token) is not bytes or len(token) < 16:
        raise ValueError("the job's transfer token must be at least 16 bytes")
    return token


# -- the server -------------------------------------------------------------------------
class _Refused(Exception):
    pass


def _open_servable(root: str, rel: str) -> int:
    """A read-only fd of the file ``rel`` names under ``root``; _Refused, one line, else."""
    parts = servable(rel)
    if parts is None:
        raise _Refused("not a file of a published snapshot")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for p in parts[:-1]:
            sub = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = sub
        if layout.is_stripe_file(parts[-1]):
            st = os.stat(layout.MANIFEST, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused("not published (no manifest beside it)")
        # O_NONBLOCK: opening a FIFO planted under a stripe's name must not block.
        f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                    dir_fd=fd)
    except FileNotFoundError:
        raise _Refused("no such file (or not published)") from None
    except OSError as e:     # O_NOFOLLOW: ELOOP at a symlink, ENOTDIR with O_DIRECTORY
        why = ("refused: a symlink or a non-directory on the way"
               if e.errno in (errno.ELOOP, errno.ENOTDIR) else "cannot open")
        raise _Refused(f"{why}: {causes.describe(e.errno)}") from None
    finally:
        os.close(fd)
    st = os.fstat(f)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > MAX_FILE:
        os.close(f)
        raise _Refused("not a regular file of this user's within the size limit")
    return f


class FileServer:
    """Serves, read-only, the files of published snapshots under one snapshot root to
    peers that present the job's token. ``refused`` counts requests dropped for a bad
    token or a malformed request (this module prints nothing)."""

    def __init__(self, root: Path, token: bytes, host: str = "127.0.0.1", port: int = 0):
        self._root = os.fspath(root)
        self._token = _check_token(token)
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(_ACCEPT_POLL_S)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self.refused = 0
        self._closed = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"jitc-transfer-{self.address[1]}")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and cut the transfers in flight (their peers see a short read)."""
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)     # wakes the accept at once (Linux)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread.is_alive():
            self._thread.join(timeout=2 * _ACCEPT_POLL_S)

    def __enter__(self) -> FileServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:          # closed, or EMFILE: wait a little, not a spin
                self._closed.wait(_ACCEPT_POLL_S)
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT_S)
                self._serve_one(conn)
        except (OSError, ValueError):   # the peer went away or timed out: its problem
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            self._slots.release()

    def _serve_one(self, conn: socket.socket) -> None:
        nonce = os.urandom(NONCE_BYTES)
        conn.sendall(nonce)
        path = self._authenticated(conn, nonce, time.monotonic() + IO_TIMEOUT_S)
        if path is None:
            with self._lock:
                self.refused += 1
            return
        try:
            fd = _open_servable(self._root, path)
        except _Refused as e:
            _send_header(conn, {"error": str(e)})
            return
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(fd).st_size
            _send_header(conn, {"size": size})
            conn.sendfile(f, 0, size)

    def _authenticated(self, conn: socket.socket, nonce: bytes,
                       deadline: float) -> str | None:
        """The path of a well-formed request whose MAC is right, else None. The whole
        request must arrive within IO_TIMEOUT_S (a peer dripping bytes holds no slot)."""
        (n,) = _LEN.unpack(_recv_exact(conn, _LEN.size, deadline))
        if n > MAX_REQUEST:
            return None
        try:
            req = loads(_recv_exact(conn, n, deadline))
        except (UnicodeDecodeError, ValueError, RecursionError, ProtocolError):
            return None
        if not (type(req) is dict and set(req) == {"op", "path", "mac"} and req["op"] == "get"
                and type(req["path"]) is str and type(req["mac"]) is str):
            return None
        want = _mac(self._token, nonce, req["path"]).encode()
        return req["path"] if hmac.compare_digest(want, req["mac"].encode()) else None


def _send_header(conn: socket.socket, obj: dict[str, Any]) -> None:
    raw = json.dumps(obj, separators=(",", ":")).encode()[:MAX_HEADER]
    conn.sendall(_LEN.pack(len(raw)) + raw)


# -- the client -------------------------------------------------------------------------
def _left(deadline: float) -> float:
    """The timeout of the next socket operation: IO_TIMEOUT_S, less near the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the fetch ran out of time")
    return min(IO_TIMEOUT_S, left)


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        sock.settimeout(_left(deadline))
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


class _Peer:
    """One fetch's connections to one peer, its deadline and its receive buffer."""

    def __init__(self, address: tuple[str, int], token: bytes, timeout_s: float):
        self.address, self.token = (address[0], int(address[1])), _check_token(token)
        self.name = f"{address[0]}:{address[1]}"
        self.start = time.monotonic()
        self.deadline = self.start + timeout_s
        self.received = 0
        self._buf: memoryview | None = None

    def open(self, rel: str, max_bytes: int) -> tuple[socket.socket, int]:
        """A connection positioned at the body of ``rel``, and the body's size."""
        sock = socket.create_connection(self.address, timeout=_left(self.deadline))
        try:
            nonce = _recv_exact(sock, NONCE_BYTES, self.deadline)
            req = json.dumps({"op": "get", "path": rel,
                              "mac": _mac(self.token, nonce, rel)}).encode()
            sock.settimeout(_left(self.deadline))
            sock.sendall(_LEN.pack(len(req)) + req)
            try:
                (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size, self.deadline))
            except ConnectionError:
                raise TransferError("the peer closed the connection without answering "
                                    "(a wrong token?)") from None
            if n > MAX_HEADER:
                raise TransferError(f"response header of {n} bytes (at most {MAX_HEADER})")
            try:
                hdr = loads(_recv_exact(sock, n, self.deadline))
            except (UnicodeDecodeError, ValueError, RecursionError, ProtocolError):
                raise TransferError("response header is not strict JSON") from None
            if type(hdr) is dict and set(hdr) == {"error"} and type(hdr["error"]) is str:
                raise TransferError(f"the peer answers: {hdr['error'][:200]}")
            size = hdr.get("size") if type(hdr) is dict and set(hdr) == {"size"} else None
            if type(size) is not int or not 0 <= size <= max_bytes:
                raise TransferError(f"response header {str(hdr)[:80]} (at most {max_bytes} "
                                    "bytes expected)")
            return sock, size
        except BaseException:
            sock.close()
            raise

    def small(self, rel: str) -> bytes:
        sock, size = self.open(rel, MAX_SMALL)
        with sock:
            data = _recv_exact(sock, size, self.deadline)
        self.received += size
        return data

    def into(self, rel: str, fd: int, size: int, crc: Any) -> int:
        """Receive ``rel`` (exactly ``size`` bytes) into ``fd``; its CRC32C by ``crc``."""
        if self._buf is None:
            self._buf = memoryview(bytearray(CHUNK))
        sock, got_size = self.open(rel, size)
        value, got = 0, 0
        with sock:
            if got_size != size:
                raise TransferError(f"the peer offers {got_size} bytes, the manifest says "
                                    f"{size}")
            while got < size:
                want, filled = min(CHUNK, size - got), 0
                while filled < want:
                    sock.settimeout(_left(self.deadline))
                    k = sock.recv_into(self._buf[filled:want])
                    if k == 0:
                        raise TransferError(f"the peer closed after {got + filled} of "
                                            f"{size} bytes")
                    filled += k
                piece = self._buf[:filled]
                _write_all(fd, piece)
                value = crc(value, piece)
                got += filled
        self.received += size
        return value

    def fetched(self, files: int, kept: int = 0) -> Fetched:
        return Fetched(files, self.received, time.monotonic() - self.start, kept)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _tmp(directory: Path, name: str) -> Path:
    """tmpfiles.py's spelling of a Python writer's temporary, so a killed fetch's is swept."""
    return directory / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   private.FILE_MODE)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Landing:
    """The local directory a fetch writes into, and what it must take back on failure."""

    def __init__(self, root: Path, parts: list[str]):
        self.dir = Path(root).joinpath(*parts)
        self.made: list[Path] = []
        p = self.dir
        while not os.path.lexists(p):
            self.made.append(p)
            p = p.parent
        private.make_dirs(self.dir)
        if os.path.realpath(self.dir) != os.path.join(os.path.realpath(root), *parts):
            raise TransferError(f"{self.dir} is reached through a symlink: refusing it")
        self.temps: list[Path] = []
        self.placed: list[Path] = []

    def write(self, name: str, data: bytes) -> Path:
        """``data`` in a fsynced private temporary for ``name``."""
        tmp = _tmp(self.dir, name)
        self.temps.append(tmp)
        fd = _create(tmp)
        try:
            _write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def place(self, tmp: Path, name: str) -> None:
        os.replace(tmp, self.dir / name)
        self.temps.remove(tmp)
        self.placed.append(self.dir / name)

    def undo(self) -> None:
        for p in self.temps + self.placed:
            try:
                p.unlink()
            except OSError:
                pass
        for d in self.made:          # deepest first; only what this fetch made, if empty
            try:
                d.rmdir()
            except OSError:
                pass


def _failed(peer: _Peer, rel: str, e: BaseException, tmp: Path | None = None) -> TransferError:
    if isinstance(e, OSError) and e.errno is not None:
        text = (f"{e.filename}: " if e.filename else "") + causes.describe(e.errno)
    else:
        text = str(e) or type(e).__name__
    if tmp is not None:       # a check's message names the temporary: say what it was
        text = text.replace(f"{tmp}: ", "").replace(str(tmp), "the received file")
    return TransferError(f"fetch {rel} from {peer.name}: {text}")


def _stripe_ok(path: Path, m: dict[str, Any], j: int, crc: int | None = None) -> bool:
    """Whether ``path`` is stripe j as manifest ``m`` describes it: size, CRC32C (``crc``
    when it was computed on the way in), header. CorruptSnapshotError for a bad header."""
    from ...snapshot.format import read_header
    from ...snapshot.manifest import check_stripe_metadata
    from ...snapshot.verify import file_crc32c
    k = m["nstripes"]
    info = m["files"][layout.stripe_file(j, k)]
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size != info["bytes"]:
        return False
    if (file_crc32c(path) if crc is None else crc) != info["crc32c"]:
        return False
    check_stripe_metadata(read_header(path), m["step"], m["fingerprint"], j, k)
    return True


def _missing(land: _Landing, m: dict[str, Any]) -> list[int]:
    """The stripes not already in ``land`` and verifying (any other file under a stripe's
    name is removed), after checking there is room for them."""
    todo = []
    for j in range(m["nstripes"]):
        path = land.dir / layout.stripe_file(j, m["nstripes"])
        try:
            if _stripe_ok(path, m, j):
                continue
        except (OSError, CorruptSnapshotError):
            pass
        if os.path.lexists(path):
            path.unlink()        # not this snapshot's stripe: it must not outlive a failure
        todo.append(j)
    need = sum(m["files"][layout.stripe_file(j, m["nstripes"])]["bytes"] for j in todo)
    vfs = os.statvfs(land.dir)
    if vfs.f_bavail * vfs.f_frsize < need:
        raise TransferError(f"{land.dir}: {need} bytes to fetch, "
                            f"{vfs.f_bavail * vfs.f_frsize} free (ENOSPC)")
    return todo


def _fetch_stripe(peer: _Peer, land: _Landing, rel: str, tmp: Path, m: dict[str, Any],
                  j: int) -> None:
    from ...snapshot.verify import _crc_lib      # the shim's CRC32C, as verify.py gets it
    ffi, lib = _crc_lib()
    name = layout.stripe_file(j, m["nstripes"])
    info = m["files"][name]
    land.temps.append(tmp)
    fd = _create(tmp)
    try:
        value = peer.into(rel, fd, info["bytes"],
                          lambda c, v: int(lib.jitc_crc32c(c, ffi.from_buffer(v), len(v))))
        os.fsync(fd)
    finally:
        os.close(fd)
    if not _stripe_ok(tmp, m, j, value):
        raise CorruptSnapshotError(f"CRC32C {value:#010x}, manifest says "
                                   f"{info['crc32c']:#010x}")
    land.place(tmp, name)


def _small_landing(peer: _Peer, rel: str, parts: list[str], root: Path, sha256: str | None,
                   what: str) -> tuple[bytes, _Landing]:
    """A manifest or index fetched whole and checked against the sha256 it was published
    with, and the directory it lands in (nothing created before the check)."""
    try:
        raw = peer.small(rel)
        got = hashlib.sha256(raw).hexdigest()
        if sha256 is not None and not hmac.compare_digest(got, sha256):
            raise TransferError(f"{what} sha256 {got[:16]}..., expected {sha256[:16]}...")
        return raw, _Landing(root, parts[:-1])
    except (TransferError, OSError) as e:
        raise _failed(peer, rel, e) from None


def fetch_shard(address: tuple[str, int], token: bytes, root: Path, shard_dir: str,
                manifest_sha256: str | None, *, timeout_s: float = 60.0) -> Fetched:
    """Make ``root/shard_dir`` (relative to the snapshot root, as layout.py names it:
    ``snap-a1-s7`` or ``snap-a1-s7/shard-1``) a verified copy of the peer's. See the module
    docstring for the order of checks; TransferError, one line, on any failure, with
    nothing of this fetch left behind. ShimError if libjitc.so (the CRC) is missing."""
    from ...snapshot.verify import _crc_lib, read_manifest, verify_files
    _crc_lib()
    parts = servable(f"{shard_dir}/{layout.MANIFEST}")
    if parts is None:
        raise TransferError(f"fetch {shard_dir!r}: not a snapshot or shard directory name")
    peer, rel = _Peer(address, token, timeout_s), "/".join(parts)
    raw, land = _small_landing(peer, rel, parts, root, manifest_sha256, "manifest")
    tmp = None
    try:
        mtmp = tmp = land.write(layout.MANIFEST, raw)
        m = read_manifest(mtmp)
        old = land.dir / layout.MANIFEST
        if os.path.lexists(old) and not (old.is_file() and old.read_bytes() == raw):
            old.unlink()      # another snapshot's manifest must not front these stripes
        todo = _missing(land, m)
        for j in todo:
            rel = "/".join(parts[:-1] + [layout.stripe_file(j, m["nstripes"])])
            tmp = _tmp(land.dir, layout.stripe_file(j, m["nstripes"]))
            _fetch_stripe(peer, land, rel, tmp, m, j)
        _fsync_dir(land.dir)
        rel, tmp = "/".join(parts), mtmp
        verify_files(land.dir, m, checksums=False)     # the set: index, meta (CRCs done)
        land.place(mtmp, layout.MANIFEST)
        _fsync_dir(land.dir)
        return peer.fetched(len(todo) + 1, m["nstripes"] - len(todo))
    except (TransferError, CorruptSnapshotError, OSError) as e:
        land.undo()
        raise _failed(peer, rel, e, tmp) from None
    except BaseException:
        land.undo()
        raise


def fetch_index(address: tuple[str, int], token: bytes, root: Path, snap_dir: str,
                sha256: str | None = None, *, timeout_s: float = 60.0) -> Fetched:
    """Fetch ``root/snap_dir/snapshot.json`` (a snapshot with several shards), check its
    sha256 when given and ``layout.read_index`` it, then rename it into place. Fetch the
    shards first: a resuming rank follows the index. TransferError, one line, on failure."""
    parts = servable(f"{snap_dir}/{layout.INDEX}")
    if parts is None:
        raise TransferError(f"fetch {snap_dir!r}: not a snapshot directory name")
    peer, rel = _Peer(address, token, timeout_s), "/".join(parts)
    raw, land = _small_landing(peer, rel, parts, root, sha256, "index")
    tmp = None
    try:
        tmp = land.write(layout.INDEX, raw)
        layout.read_index(tmp)
        land.place(tmp, layout.INDEX)
        _fsync_dir(land.dir)
        return peer.fetched(1)
    except (CorruptSnapshotError, OSError) as e:
        land.undo()
        raise _failed(peer, rel, e, tmp) from None
    except BaseException:
        land.undo()
        raise
