"""A small but real data-parallel training job: a character-level transformer trained on
the source text of Python's standard library, with dropout, a shuffling DistributedSampler,
AdamW and a warm-up/cosine LR schedule. gloo on CPU, NCCL on GPUs.

    torchrun --nproc-per-node 2 examples/ddp_train.py --steps 60 --save out.pt
    jitc supervise --inject crash@rank=1,step=25 -- torchrun --nproc-per-node 2 \
        examples/ddp_train.py --steps 60 --save out.pt

Deterministic for a given --seed: the same command gives bitwise-equal weights, with or
without injected faults (the jitc lines are the only ones a user adds: protect, batches).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import jitc
from jitc.faults import Injector, parse_specs

from baseline import PeriodicCheckpointer, Trace


def corpus() -> bytes:
    """Text that ships with Python: the source of a few standard-library modules."""
    import argparse as a, inspect as i, json.decoder as j, textwrap as t
    return "".join(inspect.getsource(m) for m in (a, i, j, t)).encode()


class Chunks(Dataset):
    def __init__(self, data: bytes, context: int):
        self.data = torch.tensor(list(data), dtype=torch.long)
        self.context = context

    def __len__(self):
        return (len(self.data) - 1) // self.context

    def __getitem__(self, i):
        start = i * self.context
        chunk = self.data[start:start + self.context + 1]
        return chunk[:-1], chunk[1:]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, context: int, dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 256, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((context, context), float("-inf")), 1))

    def forward(self, idx):
        x = self.drop(self.embed(idx) + self.pos[: idx.shape[1]])
        for block in self.blocks:
            x = block(x, self.mask[: idx.shape[1], : idx.shape[1]])
        return self.head(self.ln(x))


def pin_bucket_layout(ddp: DDP) -> None:
    """Fix DDP's gradient bucket layout now, for the whole run.

    DDP rebuilds its buckets once, after the first iteration, in the order gradients
    arrived. The all-reduce sums each element in an order that depends on where it sits
    in its bucket, and with more than two ranks floating-point addition is not
    associative: a run resumed at step k would reduce step k in the initial layout while
    the uninterrupted run used the rebuilt one, and the weights would differ in the last
    bits. Rebuilding now, in parameter order, gives every attempt the same layout (at some
    loss of communication/computation overlap on GPUs: this example favours exactness).
    """
    reducer = ddp.reducer
    if hasattr(reducer, "_push_all_rebuilt_params") and hasattr(reducer, "_rebuild_buckets"):
        reducer._push_all_rebuilt_params()
        reducer._rebuild_buckets()
        ddp._has_rebuilt_buckets = True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--save", help="write the final model.state_dict() here (rank 0)")
    p.add_argument("--timings", help="write per-step wall times (JSON) here (rank 0)")
    p.add_argument("--no-jitc", action="store_true", help="plain loop, without jitc.protect")
    p.add_argument("--periodic-every", type=int, default=None,
                   help="jitc periodic safety-net snapshot every N steps")
    p.add_argument("--quiet", action="store_true", help="do not log the loss every step")
    p.add_argument("--trace", help="append JSON-lines timing events here (rank 0; benchmarks)")
    b = p.add_argument_group("baseline without jitc (with --no-jitc, under torchrun --max-restarts)")
    b.add_argument("--ckpt-every", type=int, help="periodic checkpoint every N steps")
    b.add_argument("--ckpt-dir", help="where periodic checkpoints go")
    b.add_argument("--ckpt-kind", choices=["torch", "dcp"], default="torch",
                   help="torch.save (blocking) or torch.distributed.checkpoint.async_save")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.time()
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    jitc.init_process_group("nccl" if cuda else "gloo")  # restart-safe under torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(args.seed)       # identical initial weights on every rank
    model = CharTransformer(args.context, args.dim, args.layers, args.heads, args.dropout).to(device)
    ddp = DDP(model, device_ids=[device.index] if cuda else None)
    pin_bucket_layout(ddp)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                                  * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    data = Chunks(corpus(), args.context)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    trace = Trace(args.trace, rank)
    trace("start", attempt=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)), ts_process=started)
    ckpt = None
    if args.no_jitc:
        # What users do today: their own seeding, their own checkpoints, torchrun restarts.
        torch.manual_seed(args.seed + rank)
        start = 0
        if args.ckpt_every:
            ckpt = PeriodicCheckpointer(args.ckpt_kind, args.ckpt_dir, args.ckpt_every, ddp.module,
                                        optimizer, scheduler, trace)
            start = ckpt.load()
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        injector = Injector(parse_specs([os.environ.get("JITC_INJECT", "")]), rank, attempt,
                            lambda spec: trace.any_rank("fault_injected", kind=spec.kind, step=spec.step))
        batches = _plain_batches(loader, args.seed, rank, start, args.steps, ckpt, injector)
    else:
        session = jitc.protect(ddp, optimizer, scheduler=scheduler, seed=args.seed,
                               periodic_every=args.periodic_every)
        trace("resume_point", step=session.start_step)
        batches = session.batches(loader, args.steps)

    times = []
    for step, (x, y) in batches:
        t0 = time.perf_counter()
        if not times:
            trace("first_step", step=step)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(ddp(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if not args.quiet and rank == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            trace("first_step_done", step=step)

    if ckpt is not None:
        ckpt.close()
    trace("finished", steps=args.steps)
    if rank == 0 and args.save:
        torch.save(model.state_dict(), args.save)
    if rank == 0 and args.timings:
        with open(args.timings, "w") as f:
            json.dump({"step_s": times}, f)
    dist.destroy_process_group()


def _plain_batches(loader, seed, rank, start, steps, ckpt, injector):
    from jitc.data import epoch_iterator
    per_epoch, iterator = len(loader), None
    for step in range(start, steps):
        epoch, index = divmod(step, per_epoch)
        if iterator is None or index == 0:
            iterator = epoch_iterator(loader, epoch, index, seed, rank)
        if ckpt is not None:
            ckpt.maybe_save(step)
        injector.maybe_fire(step, "forward")
        yield step, next(iterator)


if __name__ == "__main__":
    main()
