"""What a torchrun command says about the nodes of its job.

Every node runs the same ``jitc supervise -- torchrun ...``; each supervisor reads from it,
without talking to the others, how many nodes there are, which one it is (static
rendezvous) and where the supervisors' coordination store lives. torchrun's own parser
reads the command (nodes.py: ``PET_*`` defaults, abbreviated and underscore options), and
the endpoint is parsed by torchrun's own ``parse_rendezvous_endpoint``, so the answer is
the one torchrun acts on.

The coordination store listens beside the rendezvous endpoint, on its port + 1, unless a
port is given: every node computes the same address from the same command line, on the
host the job's admins already point all nodes at (and, usually, open a port range on).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import UsageError
from ..nodes import parse_torchrun

BACKENDS = ("static", "c10d")
STATIC_DEFAULT_PORT = 29500     # torchrun's --master-port when none is given (run.py)
C10D_DEFAULT_PORT = 29400       # torchrun's c10d endpoint port when none is given
STATIC_JOB_ID = "static"        # static rendezvous has no --rdzv-id of its own
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")   # a store key fragment, nothing more


@dataclass(frozen=True)
class Topology:
    """The nodes of one multi-node torchrun job, as this node's command line says."""
    nnodes: int
    node_rank: int | None    # static: --node-rank (default 0); c10d: None, the store assigns
    backend: str             # "static" | "c10d"
    rdzv_host: str
    rdzv_port: int
    store_host: str
    store_port: int
    job_id: str


def topology_of(command: tuple[str, ...], environ: dict[str, str],
                coord_port: int | None = None) -> Topology | None:
    """The job's nodes, or None when ``command`` runs on one node (not torchrun,
    ``--standalone``, ``--nnodes 1``, ``1:1``). ``UsageError`` (one line) for what the
    supervisors cannot coordinate: elastic node counts, other rendezvous backends, a bad
    --rdzv-id, a port out of range."""
    args = parse_torchrun(command, environ)
    if args is None or getattr(args, "standalone", False):
        return None
    nnodes = _fixed_nnodes(str(args.nnodes))
    if nnodes is None:
        return None
    backend = str(args.rdzv_backend)
    if backend not in BACKENDS:
        raise UsageError(f"--rdzv-backend {backend} is not supported across nodes; "
                         f"use {' or '.join(BACKENDS)}")
    host, port = _endpoint(args, backend)
    store_port = port + 1 if coord_port is None else coord_port
    if not 0 < store_port < 1 << 16 or store_port == port:
        raise UsageError(f"coordination port {store_port} is not usable beside rendezvous "
                         f"port {port}; give another coordination port")
    node_rank = None
    if backend == "static":
        node_rank = int(args.node_rank)
        if not 0 <= node_rank < nnodes:
            raise UsageError(f"--node-rank {node_rank} is outside 0..{nnodes - 1} "
                             f"for --nnodes {nnodes}")
    job_id = STATIC_JOB_ID if backend == "static" else str(args.rdzv_id)
    if not _JOB_ID.fullmatch(job_id):
        raise UsageError(f"--rdzv-id {job_id!r} must be 1 to 64 of A-Z a-z 0-9 . _ -")
    return Topology(nnodes=nnodes, node_rank=node_rank, backend=backend, rdzv_host=host,
                    rdzv_port=port, store_host=host, store_port=store_port, job_id=job_id)


def _fixed_nnodes(nnodes: str) -> int | None:
    """N from ``N`` or ``N:N``; None for one node or what torchrun itself rejects."""
    parts = nnodes.split(":")
    try:
        least, most = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        return None            # torchrun rejects it at start
    if most <= 1:
        return None
    if least != most:
        raise UsageError(f"--nnodes {nnodes}: elastic node counts are not supported; "
                         "give a fixed --nnodes N")
    return most


def _endpoint(args, backend: str) -> tuple[str, int]:
    """(host, port) of the rendezvous, chosen as torchrun's get_rdzv_endpoint does."""
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint
    endpoint = str(args.rdzv_endpoint or "")
    if backend == "static" and not endpoint:
        port = STATIC_DEFAULT_PORT if args.master_port is None else args.master_port
        endpoint = f"{args.master_addr}:{port}"
    default = C10D_DEFAULT_PORT if backend == "c10d" else -1
    try:
        host, port = parse_rendezvous_endpoint(endpoint, default_port=default)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not 0 < port < 1 << 16:
        raise UsageError(f"rendezvous endpoint {endpoint!r} needs a fixed port across nodes")
    return host, port
