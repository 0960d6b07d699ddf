"""Snapshot bandwidth per shard of an HSDP job, as a ratio of a raw write of the same bytes.

Why: in HSDP the JIT snapshot is written per shard, by that shard's healthy copies; its
write time is recovery time. The yardstick is the one benchmarks/snapshot_bandwidth.py
uses (its ``raw_write``: write + fsync of the same number of bytes into the same
directory), here per shard of a real FSDP2 model under ``jitc.protect``: the native engine
writes the rank's registered local shards (parameters and AdamW state) through the call
the periodic path makes (``Session._write`` -> ``jitc_snapshot_write``, then publish).

Per round and per shard, one shard at a time (the other ranks wait at a barrier):
``raw`` (copy 0 writes the shard's bytes to one file and fsyncs), ``jit-1`` (copy 0
writes the whole shard: the JIT case of a shard whose other copy failed) and ``jit-2``
(both copies each write one stripe). The order alternates between rounds (paired), the
time of a write by several ranks runs from the earliest start to the latest end. Ratios
are raw time / snapshot time (above 1: the snapshot is faster than the raw write).

    python benchmarks/fsdp_snapshot_bandwidth.py [--dim 1024 --blocks 3] [--rounds 3]

It starts ``torchrun --standalone`` with 4 ranks itself (mesh (2, 2), CPU, gloo) unless
already under torchrun. Rank 0 prints and writes benchmarks/results/fsdp_snapshot_bandwidth.json.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fsdp_step_cost import build, step  # noqa: E402
from snapshot_bandwidth import raw_write  # noqa: E402

MESH = (2, 2)   # (replicate, shard): rank = copy * shards + shard
MODES = ("raw", "jit-1", "jit-2")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--blocks", type=int, default=3, help="MLP blocks of 8 dim^2 parameters; "
                   "the state is 3x the parameters (AdamW), default ~300 MB over both shards")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10, help="even: each order as often")
    p.add_argument("--dir", default=None, help="directory to write into (default: a temp "
                   "dir under benchmarks/results)")
    p.add_argument("--out", default=str(HERE / "results" / "fsdp_snapshot_bandwidth.json"))
    return p.parse_args(argv)


def launch() -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={MESH[0] * MESH[1]}", __file__, *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    raise SystemExit(subprocess.run(cmd, env=env).returncode)


def writers(mode: str, shard: int) -> dict[int, int]:
    """rank -> its stripe, for the ranks that write shard ``shard`` in ``mode``."""
    copies = range(MESH[0]) if mode == "jit-2" else range(1)
    return {copy * MESH[1] + shard: copy for copy in copies}


def timed(mode: str, session, arrays, where: Path, stripe: int, nstripes: int) -> tuple:
    t0 = time.monotonic()
    if mode == "raw":
        raw_write(where / "raw.bin", arrays)
    else:
        session._write(where, nstripes, stripe)
    return t0, time.monotonic()


def one(mode: str, shard: int, rnd: int, session, arrays, root: Path, rank: int) -> float:
    """One write of shard ``shard`` in ``mode``; seconds from the first start to the last end."""
    import torch.distributed as dist
    who = writers(mode, shard)
    nbytes = sum(a.nbytes for a in arrays)
    where = root if mode == "raw" else root / f"snap-r{rnd}-s{shard}-{mode}"
    dist.barrier()
    span = timed(mode, session, arrays, where, who[rank], len(who)) if rank in who else None
    spans = [None] * dist.get_world_size()
    dist.all_gather_object(spans, span)
    if rank == min(who):      # only after every writer is done
        if mode == "raw":
            (root / "raw.bin").unlink()
        else:
            from jitc.snapshot.layout import STRIPE_SUFFIX
            written = sum(f.stat().st_size for f in where.glob(f"*{STRIPE_SUFFIX}"))
            if written < nbytes:
                raise RuntimeError(f"{where} holds {written} bytes of stripes, "
                                   f"the shard {nbytes}")
            shutil.rmtree(where)
    spans = [s for s in spans if s is not None]
    return max(e for _, e in spans) - min(s for s, _ in spans)


def summary(samples: dict[str, list[float]], nbytes: int) -> dict:
    out = {"bytes": nbytes}
    for mode in MODES:
        med = statistics.median(samples[mode])
        out[mode] = {"samples_s": samples[mode], "median_s": med, "median_GBps": nbytes / med / 1e9}
    for mode in MODES[1:]:
        paired = sorted(r / s for r, s in zip(samples["raw"], samples[mode]))
        out[mode]["paired_ratio"] = paired
        out[mode]["median_paired_ratio"] = statistics.median(paired)
        q1, _, q3 = statistics.quantiles(paired, n=4)
        out[mode]["ratio_iqr"] = [q1, q3]
        out[mode]["ratio_min_max"] = [paired[0], paired[-1]]
    return out


def run(args) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import jitc

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if dist.get_world_size() != MESH[0] * MESH[1]:
        raise SystemExit(f"needs {MESH[0] * MESH[1]} ranks")
    mesh = init_device_mesh("cpu", MESH, mesh_dim_names=("replicate", "shard"))
    model, opt = build(argparse.Namespace(dim=args.dim, blocks=args.blocks), mesh, 0)
    session = jitc.protect(model, opt, seed=0)
    x = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(rank))
    steps = iter(session.steps(3))
    for _ in range(2):                       # AdamW's state exists after its first step
        next(steps)
        step(model, opt, x)
    next(steps)                              # step 2 begun: the window is closed
    arrays = [i.local.detach().reshape(-1).numpy() for i in session.state_tensors()]
    nbytes = sum(a.nbytes for a in arrays)
    sizes = [None] * dist.get_world_size()
    dist.all_gather_object(sizes, nbytes)
    shard = rank % MESH[1]
    assert sizes[shard] == sizes[shard + MESH[1]], sizes     # copies hold equal bytes
    made = [None]
    if rank == 0:
        (HERE / "results").mkdir(exist_ok=True)
        made[0] = args.dir or tempfile.mkdtemp(dir=HERE / "results", prefix="fsdp-bw-")
        Path(made[0]).mkdir(parents=True, exist_ok=True)
    dist.broadcast_object_list(made)
    root = Path(made[0])
    samples = {s: {m: [] for m in MODES} for s in range(MESH[1])}
    try:
        for rnd in range(args.rounds):
            order = MODES if rnd % 2 == 0 else MODES[::-1]
            for s in range(MESH[1]):
                for mode in order:
                    samples[s][mode].append(one(mode, s, rnd, session, arrays, root, rank))
    finally:
        dist.barrier()
        if rank == 0 and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    if rank == 0:
        report(args, samples, sizes, root)
    next(steps, None)
    dist.destroy_process_group()


def report(args, samples, sizes, root: Path) -> None:
    shards = {str(s): summary(samples[s], sizes[s]) for s in range(MESH[1])}
    result = {"benchmark": "fsdp_snapshot_bandwidth", "mesh": list(MESH), "rounds": args.rounds,
              "model": {"dim": args.dim, "blocks": args.blocks},
              "total_state_bytes": sum(sizes[:MESH[1]]), "dir": str(root),
              "host": platform.node(), "cpus": os.cpu_count(), "shards": shards}
    print(f"HSDP mesh {MESH}: {result['total_state_bytes'] / 1e6:.0f} MB of state over "
          f"{MESH[1]} shards, {args.rounds} rounds, {os.cpu_count()} CPUs, in {root}")
    for s, r in shards.items():
        print(f"shard {s} ({r['bytes'] / 1e6:.0f} MB): raw write+fsync median "
              f"{r['raw']['median_s']:.3f} s ({r['raw']['median_GBps']:.2f} GB/s)")
        for mode in MODES[1:]:
            m = r[mode]
            print(f"  {mode}: median {m['median_s']:.3f} s ({m['median_GBps']:.2f} GB/s), "
                  f"raw/snapshot median paired ratio {m['median_paired_ratio']:.2f} "
                  f"(IQR {m['ratio_iqr'][0]:.2f}..{m['ratio_iqr'][1]:.2f}, "
                  f"min..max {m['ratio_min_max'][0]:.2f}..{m['ratio_min_max'][1]:.2f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    arguments = parse()
    if "RANK" not in os.environ:
        launch()
    run(arguments)
