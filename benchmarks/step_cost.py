"""jitc's own work per training step, measured where machine noise cannot hide it.

The end-to-end benchmark (overhead.py) compares whole torchrun runs; on a shared 2-core
VM their step times drift by tens of percent between runs, more than the effect measured.
Here two identical models train in ONE process, steps strictly alternating: model A plain,
model B under ``jitc.protect`` (registered state, step/phase/optimizer-window hooks, the
per-step meta hand-over, per-step reseeding, the native agent thread). Both see the same
machine at the same moment, so median(B) - median(A) is jitc's added time per step.

    python benchmarks/step_cost.py [--steps 400] [--dim 128 --layers 2] (model flags: ddp_train.py's)
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import ddp_train  # noqa: E402
from ddp_train import Chunks, CharTransformer, corpus  # noqa: E402

import jitc  # noqa: E402


def build(args, seed: int):
    torch.manual_seed(seed)
    model = CharTransformer(args.context, args.dim, args.layers, args.heads, args.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    return model, opt, sched


def step(model, opt, sched, x, y) -> None:
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Model flags (--dim, --layers, ...) are examples/ddp_train.py's.")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_cost.json"))
    own, model_flags = p.parse_known_args()
    args = ddp_train.parse_args(["--steps", "400", "--dim", "128", *model_flags])
    args.warmup, args.out = own.warmup, own.out
    torch.set_num_threads(1)
    data = Chunks(corpus(), args.context)
    batches = [tuple(torch.stack(t) for t in zip(*(data[(i * args.batch_size + j) % len(data)]
                                                   for j in range(args.batch_size))))
               for i in range(16)]
    plain = build(args, 0)
    protected = build(args, 0)
    session = jitc.protect(protected[0], protected[1], scheduler=protected[2], seed=0)
    steps = iter(session.steps(args.steps))
    t_plain, t_jitc = [], []
    for i in range(args.steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        step(*plain, x, y)
        t1 = time.perf_counter()
        next(steps)                      # jitc's step boundary: meta, step_begin, reseed
        step(*protected, x, y)
        t2 = time.perf_counter()
        if i >= args.warmup:
            t_plain.append(t1 - t0)
            t_jitc.append(t2 - t1)
    next(steps, None)                    # finishes the session (steps_finished, shutdown)
    a, b = statistics.median(t_plain), statistics.median(t_jitc)
    per_pair = statistics.median(j - q for q, j in zip(t_plain, t_jitc))
    result = {"benchmark": "step_cost", "steps": args.steps, "warmup": args.warmup,
              "model": {k: getattr(args, k) for k in ("dim", "layers", "heads", "context", "batch_size")},
              "plain_step_ms": a * 1e3, "jitc_step_ms": b * 1e3,
              "added_ms_median_of_pairs": per_pair * 1e3, "ratio_of_medians": b / a}
    print(f"plain {a * 1e3:.3f} ms, protected {b * 1e3:.3f} ms per step: jitc adds "
          f"{per_pair * 1e3:.3f} ms (median of paired differences), ratio {b / a:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
