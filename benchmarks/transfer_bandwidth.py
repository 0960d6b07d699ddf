"""Bandwidth of a shard fetched from another node's supervisor, as a ratio of a raw copy.

Why: with no shared filesystem a node whose ranks resume from a snapshot published on
another node waits for ``cluster/transfer.py``'s ``fetch_shard`` first; that is recovery
time. The yardstick is the same bytes over the same loopback TCP with nothing else done:
a plain server thread ``sendfile``s each stripe file, the client ``recv_into``s a 4 MiB
buffer (the fetch's chunk), writes it to a file and fsyncs it at the end, as the fetch
does for durability. The fetch adds the authenticated request, the manifest, the CRC32C of
every byte as it arrives, the header checks and ``verify_files``, and the renames.

One snapshot (``--mb`` MiB of float32 state in ``--k`` stripes, written through the C API
by a subprocess and published) on root A; per round, into an empty root B each time:
``fetch`` and ``raw``, the order alternating between rounds (paired). Ratios are raw time /
fetch time: the fetch's bandwidth as a fraction of the raw copy's.

    PYTHONPATH=. python benchmarks/transfer_bandwidth.py [--mb 256] [--k 4] [--rounds 5]

Prints one summary line and writes benchmarks/results/transfer_bandwidth.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from jitc.snapshot import layout  # noqa: E402
from jitc.supervisor.cluster import transfer  # noqa: E402

SNAP = "snap-a0-s1-0"
NTENSORS = 8


def write_snapshot(d: Path, nbytes: int, k: int) -> None:
    """Worker mode: register NTENSORS float32 arrays and write stripes 0..k-1 of step 1."""
    from jitc._shim import c_strings, check, ffi_lib
    ffi, lib = ffi_lib()
    rng = np.random.default_rng(1234)
    arrays = [rng.standard_normal(nbytes // NTENSORS // 4, dtype=np.float32)
              for _ in range(NTENSORS)]
    check(lib.jitc_init(0, 0, 1, 0, 1), "init")
    check(lib.jitc_registry_begin(), "registry_begin")
    for i, a in enumerate(arrays):
        shape = ffi.new("int64_t[]", [a.shape[0]])
        check(lib.jitc_registry_add(f"t{i}".encode(), ffi.cast("void*", a.ctypes.data),
                                    a.nbytes, b"F32", shape, 1, -1), "registry_add")
    check(lib.jitc_registry_commit(), "registry_commit")
    meta = json.dumps({"format": "jitc-meta/1", "state": {}}).encode()
    check(lib.jitc_set_meta(meta, len(meta)), "set_meta")
    check(lib.jitc_step_begin(1), "step_begin")
    stems, _keep = c_strings([layout.stripe_stem(j, k) for j in range(k)])
    step = ffi.new("int64_t*")
    check(lib.jitc_snapshot_write(str(d).encode(), k, ffi.new("int[]", list(range(k))),
                                  stems, k, 600.0, step), "snapshot_write")
    lib.jitc_shutdown(1)


class RawServer:
    """The yardstick's server: a connection sends a 4-byte index, gets that file whole."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()[:2]
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, open(self.files[struct.unpack("!I", conn.recv(4))[0]], "rb") as f:
                conn.settimeout(transfer.IO_TIMEOUT_S)
                conn.sendfile(f)

    def close(self) -> None:
        self.sock.close()


def raw_copy(server: RawServer, sizes: list[int], dest: Path) -> float:
    t0 = time.monotonic()
    buf = memoryview(bytearray(transfer.CHUNK))
    dest.mkdir(mode=0o700)
    for j, size in enumerate(sizes):
        with socket.create_connection(server.address, timeout=transfer.IO_TIMEOUT_S) as s:
            s.sendall(struct.pack("!I", j))
            fd = os.open(dest / f"raw-{j}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                got = 0
                while got < size:
                    want, filled = min(transfer.CHUNK, size - got), 0
                    while filled < want:
                        n = s.recv_into(buf[filled:want])
                        if n == 0:
                            raise RuntimeError("raw server closed early")
                        filled += n
                    piece = buf[:filled]
                    while piece:
                        piece = piece[os.write(fd, piece):]
                    got += filled
                os.fsync(fd)
            finally:
                os.close(fd)
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mb", type=int, default=256, help="state size in MiB (default 256)")
    ap.add_argument("--k", type=int, default=4, help="stripes (default 4)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where roots A and B go (default: a temp "
                    "dir under benchmarks/results)")
    ap.add_argument("--out", default=str(HERE / "results" / "transfer_bandwidth.json"))
    args = ap.parse_args()
    nbytes = args.mb << 20
    if args.write:
        write_snapshot(Path(args.write), nbytes, args.k)
        return 0

    (HERE / "results").mkdir(exist_ok=True)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(dir=HERE / "results",
                                                                 prefix="xfer-"))
    a = base / "A"
    a.mkdir(mode=0o700, parents=True)
    token = os.urandom(32)
    fetch_s, raw_s = [], []
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, __file__, "--write", str(a / SNAP), "--mb",
                        str(args.mb), "--k", str(args.k)], check=True, env=env, timeout=600)
        from jitc.snapshot.manifest import publish
        manifest = publish(a / SNAP)
        sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
        files = [a / SNAP / layout.stripe_file(j, args.k) for j in range(args.k)]
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes) + manifest.stat().st_size
        raw_server = RawServer(files)
        with transfer.FileServer(a, token) as server:
            for r in range(args.rounds):
                b = base / f"B{r}"
                for what in (("fetch", "raw") if r % 2 == 0 else ("raw", "fetch")):
                    if what == "fetch":
                        b.mkdir(mode=0o700)
                        got = transfer.fetch_shard(server.address, token, b, SNAP, sha,
                                                   timeout_s=600)
                        assert got.bytes == total and got.kept == 0, got
                        fetch_s.append(got.seconds)
                        shutil.rmtree(b)
                    else:
                        raw_s.append(raw_copy(raw_server, sizes, b))
                        shutil.rmtree(b)
        raw_server.close()
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)

    ratios = [r / f for r, f in zip(raw_s, fetch_s)]
    fmed, rmed = statistics.median(fetch_s), statistics.median(raw_s)
    result = {
        "bytes": total, "stripes": args.k, "rounds": args.rounds, "host": platform.node(),
        "cpus": os.cpu_count(), "chunk": transfer.CHUNK,
        "fetch": {"samples_s": fetch_s, "median_s": fmed, "median_GBps": total / fmed / 1e9},
        "raw": {"samples_s": raw_s, "median_s": rmed, "median_GBps": total / rmed / 1e9},
        "ratio": {"median_paired": statistics.median(ratios), "of_medians": rmed / fmed,
                  "min": min(ratios), "max": max(ratios), "paired": ratios},
    }
    print(f"{total / 2**20:.0f} MiB in {args.k} stripes, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs: fetch_shard median {fmed:.3f} s "
          f"({total / fmed / 1e9:.2f} GB/s), raw loopback copy {rmed:.3f} s "
          f"({total / rmed / 1e9:.2f} GB/s); fetch/raw bandwidth ratio median "
          f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
