"""jitc's own work per training step with FSDP2 (``fully_shard``), paired in one process.

Each rank trains two identical FSDP2 models on the same device mesh, steps strictly
alternating: model A plain, model B under ``jitc.protect`` (its local shards registered,
the step/phase/optimizer-window hooks, which FSDP2's own per-group hooks run beside). Both
see the same machine at the same moment, so the median of the paired differences is
jitc's added time per step. Rank 0 prints and writes the result.

    python benchmarks/fsdp_step_cost.py [--mesh 2x2 | --mesh 2] [--steps 200] [--dim 256 --blocks 4]

It starts ``torchrun --standalone`` itself (CPU, gloo) unless already under torchrun.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mesh", default="2x2", help="RxS (HSDP: replicas x shards) or N (pure FSDP)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fsdp_step_cost.json"))
    return p.parse_args(argv)


def mesh_shape(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.lower().split("x"))


def launch(args) -> None:
    world = 1
    for n in mesh_shape(args.mesh):
        world *= n
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world}", __file__, *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    raise SystemExit(subprocess.run(cmd, env=env).returncode)


def build(args, mesh, seed: int):
    import torch
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    blocks = [torch.nn.Sequential(torch.nn.Linear(args.dim, 4 * args.dim), torch.nn.GELU(),
                                  torch.nn.Linear(4 * args.dim, args.dim))
              for _ in range(args.blocks)]
    model = torch.nn.Sequential(*blocks, torch.nn.Linear(args.dim, args.dim))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt


def step(model, opt, x) -> None:
    loss = (model(x) - x).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run(args) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import jitc

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    shape = mesh_shape(args.mesh)
    names = ("replicate", "shard") if len(shape) == 2 else ("shard",)
    mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
    gen = torch.Generator().manual_seed(dist.get_rank())
    batches = [torch.randn(args.batch, args.dim, generator=gen) for _ in range(8)]
    plain = build(args, mesh, 0)
    protected = build(args, mesh, 0)
    t0 = time.perf_counter()
    session = jitc.protect(*protected, seed=0)
    t_protect = time.perf_counter() - t0
    steps = iter(session.steps(args.steps))
    t_plain, t_jitc = [], []
    for i in range(args.steps):
        x = batches[i % len(batches)]
        t0 = time.perf_counter()
        step(*plain, x)
        t1 = time.perf_counter()
        next(steps)
        step(*protected, x)
        t2 = time.perf_counter()
        if i >= args.warmup:
            t_plain.append(t1 - t0)
            t_jitc.append(t2 - t1)
    next(steps, None)
    a, b = statistics.median(t_plain), statistics.median(t_jitc)
    diffs = sorted(j - q for q, j in zip(t_plain, t_jitc))
    result = {"benchmark": "fsdp_step_cost", "mesh": list(shape), "world": dist.get_world_size(),
              "steps": args.steps, "warmup": args.warmup,
              "model": {"dim": args.dim, "blocks": args.blocks, "batch": args.batch},
              "protect_s": t_protect, "plain_step_ms": a * 1e3, "jitc_step_ms": b * 1e3,
              "added_ms_median_of_pairs": statistics.median(diffs) * 1e3,
              "added_ms_p10_p90": [diffs[len(diffs) // 10] * 1e3, diffs[9 * len(diffs) // 10] * 1e3],
              "ratio_of_medians": b / a}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        ratios = [r["ratio_of_medians"] for r in gathered]
        summary = {**result, "per_rank_ratio": ratios,
                   "ratio_median_over_ranks": statistics.median(ratios)}
        print(f"FSDP2 mesh {args.mesh}: plain {a * 1e3:.3f} ms, protected {b * 1e3:.3f} ms per "
              f"step (rank 0); jitc adds {summary['added_ms_median_of_pairs']:.3f} ms (median of "
              f"paired differences, p10..p90 {summary['added_ms_p10_p90'][0]:.3f}.."
              f"{summary['added_ms_p10_p90'][1]:.3f}); ratio per rank "
              f"{', '.join(f'{r:.4f}' for r in ratios)}; protect() took {t_protect:.3f} s")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    arguments = parse()
    if "RANK" not in os.environ:
        launch(arguments)
    run(arguments)
