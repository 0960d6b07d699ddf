"""Benchmark (c): snapshot write bandwidth relative to a raw write of the same bytes.

Why: the JIT checkpoint is on the recovery path, so the engine's write speed is recovery
time. The fair yardstick is the disk itself: a plain write + fsync of the same number of
bytes into the same directory, measured in the same run, interleaved with the snapshot
runs (paired), so drift in the machine's state hits both alike.

Scaling: k writer processes (k healthy replicas), each registering an identical registry
through the C API and writing stripe j of k; the time is from a common "go" to the last
stripe's completion record (process start-up and registration excluded).

    PYTHONPATH=. JITC_LIB=build/<x>/libjitc.so python benchmarks/snapshot_bandwidth.py

Prints a table and writes benchmarks/results/snapshot_bandwidth.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

NTENSORS = 8
CHUNK = 16 << 20


def make_registry(total: int) -> list[np.ndarray]:
    """NTENSORS float32 arrays summing to `total` bytes (identical in every process)."""
    rng = np.random.default_rng(1234)
    per = total // NTENSORS // 4
    return [rng.standard_normal(per, dtype=np.float32) for _ in range(NTENSORS)]


def raw_write(path: Path, arrays: list[np.ndarray]) -> float:
    t0 = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for a in arrays:
            mv = memoryview(a).cast("B")
            for off in range(0, len(mv), CHUNK):
                piece = mv[off:off + CHUNK]
                while piece:
                    n = os.write(fd, piece)
                    piece = piece[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    return time.monotonic() - t0


def worker(args) -> int:
    """One writer process: register, say ready, wait for go, write stripe j of k."""
    from jitc._shim import c_strings, check, ffi_lib
    from jitc.snapshot.layout import stripe_stem
    ffi, lib = ffi_lib()
    arrays = make_registry(args.bytes)
    check(lib.jitc_init(args.stripe, args.stripe, args.k, 0, 1), "init")
    check(lib.jitc_registry_begin(), "registry_begin")
    for i, a in enumerate(arrays):
        shape = ffi.new("int64_t[]", [a.shape[0]])
        check(lib.jitc_registry_add(f"t{i}".encode(), ffi.cast("void*", a.ctypes.data),
                                    a.nbytes, b"F32", shape, 1, -1), "registry_add")
    check(lib.jitc_registry_commit(), "registry_commit")
    check(lib.jitc_step_begin(1), "step_begin")
    print("ready", flush=True)
    sys.stdin.readline()
    step = ffi.new("int64_t*")
    t0 = time.monotonic()
    stems, _keep = c_strings([stripe_stem(args.stripe, args.k)])
    rc = lib.jitc_snapshot_write(args.dir.encode(), args.k, ffi.new("int[]", [args.stripe]),
                                 stems, 1, 600.0, step)
    t1 = time.monotonic()
    check(rc, "snapshot_write")
    print(json.dumps({"start": t0, "end": t1}), flush=True)
    lib.jitc_shutdown(1)
    return 0


def snapshot_write(root: Path, k: int, nbytes: int) -> float:
    """k processes write stripes 0..k-1 of one snapshot; seconds from go to last done."""
    d = root / f"snap-bench-k{k}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--dir", str(d),
                               "--k", str(k), "--stripe", str(j), "--bytes", str(nbytes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for j in range(k)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("writer failed to start")
        go = time.monotonic()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        ends = []
        for p in procs:
            out, _ = p.communicate(timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"writer exited {p.returncode}")
            ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    elapsed = max(ends) - go
    written = sum(f.stat().st_size for f in d.glob("stripe-*.safetensors"))
    if written < nbytes:
        raise RuntimeError(f"snapshot wrote {written} bytes, expected >= {nbytes}")
    shutil.rmtree(d)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stripe", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help="directory to write into (default: a temp "
                    "dir under benchmarks/results)")
    ap.add_argument("--bytes", type=int, default=512 << 20, help="state size (default 512 MiB)")
    ap.add_argument("--k", default="1,2,4", help="writer counts (worker mode: one int)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "snapshot_bandwidth.json"))
    args = ap.parse_args()
    if args.worker:
        args.k = int(args.k)
        return worker(args)

    ks = [int(k) for k in args.k.split(",")]
    (HERE / "results").mkdir(exist_ok=True)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(dir=HERE / "results",
                                                                 prefix="bw-"))
    root.mkdir(parents=True, exist_ok=True)
    arrays = make_registry(args.bytes)
    nbytes = sum(a.nbytes for a in arrays)
    raw, snap = [], {k: [] for k in ks}
    try:
        for _ in range(args.repeats):
            # Interleave: raw, then each k, every repeat (paired measurements).
            raw_path = root / "raw.bin"
            raw.append(raw_write(raw_path, arrays))
            raw_path.unlink()
            for k in ks:
                snap[k].append(snapshot_write(root, k, nbytes))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    raw_med = statistics.median(raw)
    result = {
        "bytes": nbytes, "repeats": args.repeats, "dir": str(root),
        "host": platform.node(), "cpus": os.cpu_count(),
        "raw_write": {"samples_s": raw, "median_s": raw_med,
                      "median_GBps": nbytes / raw_med / 1e9},
        "snapshot": {},
    }
    print(f"{nbytes / 2**20:.0f} MiB, {args.repeats} repeats, {os.cpu_count()} CPUs, in {root}")
    print(f"raw write+fsync      median {raw_med:7.3f} s  {nbytes / raw_med / 1e9:6.2f} GB/s")
    for k in ks:
        med = statistics.median(snap[k])
        paired = [r / s for r, s in zip(raw, snap[k])]
        result["snapshot"][str(k)] = {
            "samples_s": snap[k], "median_s": med, "median_GBps": nbytes / med / 1e9,
            "ratio_of_medians": raw_med / med, "median_paired_ratio": statistics.median(paired),
        }
        print(f"snapshot k={k} writers median {med:7.3f} s  {nbytes / med / 1e9:6.2f} GB/s  "
              f"ratio vs raw {raw_med / med:5.2f} (median paired {statistics.median(paired):5.2f})")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
