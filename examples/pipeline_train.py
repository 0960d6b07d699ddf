"""Pipeline-parallel training of a tiny LLaMA-style model, the CheckFree testbed.

Why this exists: CheckFree recovers a *pipeline stage*, so jitc needs a real pipeline
to protect: S stages on S ranks exchanging activations and gradients point-to-point,
GPipe-style (all microbatches forward, then all backward, one optimizer step), with
optional data-parallel replicas of every stage (world = S * D; rank r is replica
r // S of stage r % S). ``--checkfree-plus`` runs the CheckFree+ swap schedule: odd
microbatches visit the stages in the order 1,0,2,...,S-1,S-2, and the embedding and
head are replicated on stages 1 and S-2 (their gradients are summed over each pair, so
the copies stay identical).

Every step records each stage's gradient L2 norm *before* clipping (the CheckFree
weights) with ``session.record(grad_norm=...)``. Deterministic for a seed on CPU/gloo.
Protected by jitc (``--no-jitc``: the plain loop): under ``jitc supervise`` a stage that
keeps a data-parallel replica resumes from that replica's JIT snapshot, and a stage that
lost every replica is rebuilt from its neighbours (CheckFree; CheckFree+ for an edge
stage with ``--checkfree-plus``). See docs/checkfree.md.

    torchrun --nproc-per-node 4 examples/pipeline_train.py --stages 4 --steps 80
    jitc supervise --inject crash@rank=2,step=30 -- \
        torchrun --nproc-per-node 4 examples/pipeline_train.py --stages 4 --steps 80
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_tiny as L  # noqa: E402
import jitc  # noqa: E402
from jitc.checkfree import GradNormRecorder, stage_order  # noqa: E402
from jitc.checkfree.schedule import EdgeLayout, check_stages  # noqa: E402

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)  # every wait is bounded


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--microbatch-size", type=int, default=4)
    p.add_argument("--dp", type=int, default=1, help="data-parallel replicas per stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping (0: off)")
    p.add_argument("--save", type=str, default=None, help="write PATH.stage<s>.pt at the end")
    p.add_argument("--checkfree-plus", action="store_true")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--dim", type=int, default=L.Config.dim, help="model width")
    p.add_argument("--no-jitc", action="store_true", help="plain loop, without jitc.protect")
    return p.parse_args(argv)


class Layout:
    """Who is who: this rank's stage and replica, and the peers it talks to."""

    def __init__(self, rank: int, stages: int, dp: int, plus: bool):
        self.rank, self.S, self.D = rank, stages, dp
        self.stage, self.replica = rank % stages, rank // stages
        self.edges = EdgeLayout(stages, plus)
        # new_group must be called by every rank, in the same order.
        self.stage_group = None
        for s in range(stages):
            g = dist.new_group([d * stages + s for d in range(dp)], timeout=COLLECTIVE_TIMEOUT)
            if s == self.stage:
                self.stage_group = g
        self.embed_group = self.head_group = None
        if plus:
            pairs = [("embed_group", self.edges.embedding_holders), ("head_group", self.edges.head_holders)]
            for attr, holders in pairs:
                g = dist.new_group(sorted(d * stages + s for d in range(dp) for s in holders),
                                   timeout=COLLECTIVE_TIMEOUT)
                if self.stage in holders:
                    setattr(self, attr, g)

    def rank_of(self, stage: int) -> int:
        return self.replica * self.S + stage


def _allreduce_mean(params, group, divisor: int) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= divisor
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def sync_gradients(stage: L.Stage, lay: Layout) -> None:
    """Average over data-parallel replicas; sum edge-layer copies over their pair."""
    if lay.edges.checkfree_plus:
        body = list(stage.body_parameters())
        if lay.D > 1:
            _allreduce_mean(body, lay.stage_group, lay.D)
        if stage.embed is not None:
            _allreduce_mean(list(stage.embed.parameters()), lay.embed_group, lay.D)
        if stage.head is not None:
            _allreduce_mean(list(stage.head.parameters()), lay.head_group, lay.D)
    elif lay.D > 1:
        _allreduce_mean(list(stage.parameters()), lay.stage_group, lay.D)


def clip(stage: L.Stage, lay: Layout, max_norm: float) -> None:
    """Clip gradients; with CheckFree+ the edge layers are clipped on their own.

    The two copies of the embedding (head) sit in stages with different bodies: a
    single stage-wide clip would scale their identical gradients differently and the
    copies would drift apart, so a lost edge stage could no longer be restored by copy.
    """
    if lay.edges.checkfree_plus:
        torch.nn.utils.clip_grad_norm_(list(stage.body_parameters()), max_norm)
        edge = list(stage.edge_parameters())
        if edge:
            torch.nn.utils.clip_grad_norm_(edge, max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(stage.parameters(), max_norm)


def train_step(stage: L.Stage, lay: Layout, inputs, targets, args, act_shape) -> torch.Tensor:
    """Forward every microbatch through the pipeline, then backward; returns local loss sum."""
    M = args.microbatches
    saved, loss_sum = [], torch.zeros(())
    for m in range(M):
        order = stage_order(lay.S, m, args.checkfree_plus)
        pos = order.index(lay.stage)
        first, last = pos == 0, pos == lay.S - 1
        if first:
            x = inputs[m]
        else:
            x = torch.empty(act_shape)
            dist.recv(x, src=lay.rank_of(order[pos - 1]))
            x.requires_grad_()
        y = stage(x, first=first, last=last)
        loss = None
        if last:
            loss = F.cross_entropy(y.reshape(-1, L.VOCAB), targets[m].reshape(-1)) / M
            loss_sum += loss.detach()
        else:
            dist.send(y.detach().contiguous(), dst=lay.rank_of(order[pos + 1]))
        saved.append((order, pos, x, y, loss))
    for order, pos, x, y, loss in reversed(saved):
        if loss is not None:
            loss.backward()
        else:
            g = torch.empty(act_shape)
            dist.recv(g, src=lay.rank_of(order[pos + 1]))
            y.backward(g)
        if pos > 0:
            dist.send(x.grad.contiguous(), dst=lay.rank_of(order[pos - 1]))
    return loss_sum


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    jitc.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != args.stages * args.dp:
        raise SystemExit(f"world size {world} != stages {args.stages} * dp {args.dp}")
    if args.checkfree_plus:
        check_stages(args.stages)
        if args.microbatches % 2:
            raise SystemExit("--checkfree-plus swaps on half the microbatches: use an even --microbatches")
    lay = Layout(rank, args.stages, args.dp, args.checkfree_plus)
    cfg = L.Config(dim=args.dim, hidden=2 * args.dim)
    stage = L.Stage(cfg, embed=lay.edges.holds_embedding(lay.stage),
                    head=lay.edges.holds_head(lay.stage)).init_weights(args.seed, lay.stage)
    optimizer = torch.optim.AdamW(stage.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / max(1, args.warmup)))
    grad_norm = GradNormRecorder(stage)
    data = L.corpus()
    act_shape = (args.microbatch_size, cfg.seq, cfg.dim)

    if args.no_jitc:
        session, steps = None, range(args.steps)
    else:
        session = jitc.protect(stage, optimizer, scheduler=scheduler, seed=args.seed,
                               stage=lay.stage, num_stages=lay.S,
                               checkfree_plus=args.checkfree_plus)
        steps = session.steps(args.steps)     # starts at the resume step
    for step in steps:
        # Data is a pure function of (seed, step, replica): a resumed or replayed step
        # sees the same tokens.
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + lay.replica)
        xb, yb = L.batch(data, args.microbatches * args.microbatch_size, cfg.seq, gen)
        inputs, targets = xb.chunk(args.microbatches), yb.chunk(args.microbatches)

        optimizer.zero_grad(set_to_none=True)
        loss_sum = train_step(stage, lay, inputs, targets, args, act_shape)
        sync_gradients(stage, lay)
        norm = grad_norm.record()                    # before clipping: the CheckFree weight
        if session is not None:
            session.record(grad_norm=norm)
        # Every collective of the step happens before the optimizer step: a rank waiting
        # in one is outside the optimizer window, so its state is a consistent snapshot.
        dist.all_reduce(loss_sum)                     # every microbatch's loss lives on one rank
        log = args.log_every and (step % args.log_every == 0 or step == args.steps - 1)
        if log:
            norms = torch.zeros(lay.S)
            if lay.replica == 0:
                norms[lay.stage] = float(norm)
            dist.all_reduce(norms)
        if args.clip > 0:
            clip(stage, lay, args.clip)
        optimizer.step()
        scheduler.step()
        grad_norm.commit(step)

        loss = loss_sum.item() / args.dp
        if log and rank == 0:
            print(f"step {step} loss {loss:.4f} grad_norms "
                  + " ".join(f"{v:.3f}" for v in norms.tolist()), flush=True)

    if args.save and lay.replica == 0:
        torch.save(stage.state_dict(), f"{args.save}.stage{lay.stage}.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
