"""A 2-rank DDP job whose rank 0 is busy outside collectives every step (an eval, a
``torch.save``): the shape of issue 14's shim-only race. When rank 1 dies, torchrun's
monitor sees it before rank 0 reaches its next collective and SIGTERMs rank 0 first.

    torchrun --nproc-per-node 2 tests/e2e/busy_rank_train.py --steps 12 --save out.pt \
        --busy 0.5 --trace trace.jsonl

Deterministic: the same command gives bitwise-equal weights, with or without faults.
``--trace`` appends one JSON line per attempt from rank 0: ``{"start_step": N}``;
``--progress`` holds the step rank 0 is running.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import jitc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--busy", type=float, default=0.5,
                   help="rank 0's seconds outside collectives a step")
    p.add_argument("--save")
    p.add_argument("--trace")
    p.add_argument("--progress", help="rank 0 writes the step it is running here, each step")
    p.add_argument("--periodic-every", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    jitc.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    ddp = DDP(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    session = jitc.protect(ddp, optimizer, seed=7, periodic_every=args.periodic_every)
    if rank == 0 and args.trace:
        with open(args.trace, "a") as f:
            f.write(json.dumps({"start_step": session.start_step}) + "\n")
    for step in session.steps(args.steps):
        if rank == 0 and args.progress:
            with open(args.progress, "w") as f:
                f.write(str(step))
        x = torch.randn(8, 16)            # the per-step stream jitc reseeds
        loss = F.mse_loss(ddp(x), torch.zeros(8, 4))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0:
            time.sleep(args.busy)         # eval / torch.save: no collective
    if rank == 0 and args.save:
        torch.save(model.state_dict(), args.save)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
