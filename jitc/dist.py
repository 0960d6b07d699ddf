"""A process group that survives torchrun's own restarts.

Under ``torchrun --max-restarts`` every attempt of a worker group talks to the same
TCPStore (static rendezvous keeps the agent's store; env:// hands it to the workers with
no per-attempt prefix), so a restarted rank can read the address its peer published in
the previous attempt: gloo then fails with ``connectFullMesh ... Connection refused`` or
waits forever to connect, and NCCL can read a stale unique id. Seen on torch 2.13 with a
plain script, no jitc involved. ``jitc supervise`` is not affected (it starts a new
torchrun, hence a new store); shim-only runs under ``torchrun --max-restarts`` are.

``init_process_group`` below is ``torch.distributed.init_process_group`` with the
rendezvous keys of each attempt under their own prefix. Everywhere else (no torchelastic,
an explicit ``store`` or ``init_method``) it is the plain call.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

from .errors import UsageError

__all__ = ["init_process_group"]

_ENV = ("TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


def init_process_group(backend: str | None = None, **kwargs) -> None:
    """``dist.init_process_group(backend, **kwargs)``, restart-safe under torchrun."""
    if "store" in kwargs or kwargs.get("init_method") not in (None, "env://") or not all(
            name in os.environ for name in _ENV):
        dist.init_process_group(backend, **kwargs)
        return
    kwargs.pop("init_method", None)
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        port = int(os.environ["MASTER_PORT"])
    except ValueError as e:
        raise UsageError(f"torchrun environment is malformed: {e}") from None
    if kwargs.setdefault("rank", rank) != rank or kwargs.setdefault("world_size", world) != world:
        raise UsageError("rank/world_size given to init_process_group disagree with torchrun's "
                          f"RANK={rank} WORLD_SIZE={world}")
    timeout = kwargs.get("timeout") or timedelta(minutes=10)
    # torchrun's agent hosts the store when it says so; otherwise rank 0 hosts it, as
    # env:// would.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], port, world,
                          is_master=not agent_store and rank == 0, timeout=timeout,
                          multi_tenant=not agent_store)
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    dist.init_process_group(backend, store=dist.PrefixStore(f"jitc/attempt-{attempt}", store),
                            **kwargs)
