"""HSDP training of a tiny LLaMA-style model with FSDP2 (``fully_shard``), protected by jitc.

Why this exists: it is the FSDP2/HSDP user's script with jitc added, and the testbed of
jitc's sharded JIT checkpoints. The device mesh is ``(replicate, shard)``: each block is
sharded over the ``shard`` ranks and every shard has a copy on each replica group, so a
failed rank's shard is written by its copy and the run resumes having replayed at most
one step. ``--shards`` equal to the world size is pure FSDP (a 1-D mesh, no copies):
only the periodic net (``--periodic-every``) protects it. gloo on CPU, NCCL on GPUs.

    jitc supervise -- torchrun --standalone --nproc-per-node 4 examples/fsdp_train.py
    jitc supervise --inject crash@rank=1,step=10 -- \\
        torchrun --standalone --nproc-per-node 4 examples/fsdp_train.py --steps 20

Deterministic for a seed on CPU: every rank's batch is a pure function of (seed, step,
rank), so a resumed run ends bitwise equal to an uninterrupted one. ``--save PATH``
writes the full (gathered) model and optimizer state, rank 0.
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
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_tiny as L  # noqa: E402
import jitc  # noqa: E402

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)  # every wait is bounded


class TinyLlama(nn.Module):
    def __init__(self, cfg: L.Config, layers: int):
        super().__init__()
        self.embed = nn.Embedding(L.VOCAB, cfg.dim)
        self.layers = nn.ModuleList(L.Block(cfg) for _ in range(layers))
        self.head = L.Head(cfg)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--shards", type=int, default=2, help="ranks per replica group (the "
                   "'shard' mesh dimension); the world size: pure FSDP")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--periodic-every", type=int, default=None,
                   help="jitc periodic safety-net snapshot every N steps")
    p.add_argument("--save", help="write the full model and optimizer state here (rank 0)")
    p.add_argument("--log-every", type=int, default=10)
    return p.parse_args(argv)


def build_mesh(world: int, shards: int, device: str):
    if world % shards:
        raise SystemExit(f"world size {world} is not a multiple of --shards {shards}")
    if shards == world:
        return init_device_mesh(device, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device, (world // shards, shards),
                            mesh_dim_names=("replicate", "shard"))


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Model and optimizer state gathered to full tensors (a collective: every rank)."""
    def full(t):
        return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()
    out = {f"model.{k}": full(v) for k, v in model.state_dict().items()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in sorted(optimizer.state.get(p, {}).items()):
            out[f"optim.{i}.{key}"] = full(value)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    jitc.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    mesh = build_mesh(world, args.shards, "cuda" if cuda else "cpu")

    cfg = L.Config(dim=args.dim, hidden=2 * args.dim)
    torch.manual_seed(args.seed)          # the same full weights on every rank, then sharded
    model = TinyLlama(cfg, args.layers).to("cuda" if cuda else "cpu")
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / max(1, args.warmup)))
    session = jitc.protect(model, optimizer, scheduler=scheduler, seed=args.seed,
                           periodic_every=args.periodic_every)
    data = L.corpus()

    for step in session.steps(args.steps):
        # Every rank is a data-parallel worker: its batch depends on (seed, step, rank).
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + rank)
        x, y = (t.to(mesh.device_type) for t in L.batch(data, args.batch_size, cfg.seq, gen))
        loss = F.cross_entropy(model(x).reshape(-1, L.VOCAB), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if rank == 0 and args.log_every and step % args.log_every == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)

    state = full_state(model, optimizer)
    if rank == 0 and args.save:
        torch.save(state, args.save)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
