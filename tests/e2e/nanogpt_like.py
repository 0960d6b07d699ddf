"""A nanoGPT-shaped training loop, small enough for CPU/gloo end-to-end tests.

The patterns of nanoGPT's train.py that matter to recovery: gradient accumulation over
micro-steps (``no_sync`` and ``require_backward_grad_sync``), tied embedding and output
weights, batches drawn from the global RNG, the LR set from the iteration, an eval on
rank 0 only that updates ``best_val_loss``, and the first micro-batch of iteration k+1
prefetched at the end of iteration k. The jitc lines are marked ``# jitc``.

    torchrun --nproc-per-node 2 tests/e2e/nanogpt_like.py --steps 12 --save out.pt --report DIR
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import jitc

VOCAB, BLOCK = 64, 16


class TinyGPT(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim)
        self.wpe = nn.Embedding(BLOCK, dim)
        self.drop = nn.Dropout(0.1)
        self.ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight          # tied, as in nanoGPT

    def forward(self, idx, targets):
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])))
        x = x + self.mlp(self.ln(x))
        logits = self.lm_head(x)
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


class Counter:
    """Per-rank state wrongly handed over as replicated ``extra_state``."""

    def __init__(self, value: int):
        self.value = value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--accum", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--save")
    p.add_argument("--report", help="directory: each rank writes rank-<r>.json")
    p.add_argument("--no-carry", action="store_true", help="the loop without session.carry")
    p.add_argument("--per-rank-extra", action="store_true",
                   help="also pass extra_state whose value differs between ranks (a mistake)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    jitc.init_process_group("gloo")                                     # jitc (shim-only: per-attempt keys)
    rank = dist.get_rank()
    master_process = rank == 0
    torch.manual_seed(1337)
    data = {split: torch.randint(VOCAB, (4096,), generator=torch.Generator().manual_seed(i))
            for i, split in enumerate(("train", "val"))}

    def get_batch(split: str):
        ix = torch.randint(len(data[split]) - BLOCK - 1, (4,))        # the global RNG
        x = torch.stack([data[split][i:i + BLOCK] for i in ix])
        y = torch.stack([data[split][i + 1:i + 1 + BLOCK] for i in ix])
        return x, y

    def get_lr(it: int) -> float:                                       # warm-up, cosine
        if it < 3:
            return 1e-2 * (it + 1) / 3
        return 1e-3 + 0.5 * (1 + math.cos(math.pi * it / args.steps)) * 9e-3

    raw_model = TinyGPT()
    model = DDP(raw_model)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=1e-2, weight_decay=0.1)

    @torch.no_grad()
    def estimate_loss() -> float:
        raw_model.eval()
        loss = sum(raw_model(*get_batch("val")).item() for _ in range(2)) / 2
        raw_model.train()
        return loss

    extra = {"counter": Counter(rank)} if args.per_rank_extra else None
    session = jitc.protect(model, optimizer, seed=7, extra_state=extra)  # jitc
    best_val_loss, evals = 1e9, []
    X, Y = get_batch("train")                                           # the first batch
    if not args.no_carry:
        X, Y = session.carry("batch", lambda: (X, Y))                   # jitc
        best_val_loss = session.carry("best_val_loss", lambda: best_val_loss)   # jitc
        evals = session.carry("evals", lambda: evals)                   # jitc
    for it in session.steps(args.steps):                                # jitc
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        if it % args.eval_every == 0 and master_process:
            val = estimate_loss()
            evals.append([it, val])
            if val < best_val_loss:
                best_val_loss = val
        for micro_step in range(args.accum):
            last = micro_step == args.accum - 1
            if micro_step == 0:
                with model.no_sync():
                    loss = model(X, Y) / args.accum
                    X, Y = get_batch("train")       # prefetch: the next micro-batch
                    loss.backward()
                continue
            model.require_backward_grad_sync = last
            loss = model(X, Y) / args.accum
            X, Y = get_batch("train")               # on the last micro-step: iteration it+1's
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not args.quiet and master_process:
            print(f"iter {it}: loss {loss.item() * args.accum:.4f}", flush=True)
    if args.save and master_process:
        torch.save(raw_model.state_dict(), args.save)
    if args.report:
        Path(args.report).mkdir(parents=True, exist_ok=True)
        Path(args.report, f"rank-{rank}.json").write_text(
            json.dumps({"best_val_loss": best_val_loss, "evals": evals}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
