"""What a torchrun command says about its nodes, read as torchrun reads it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from jitc.errors import UsageError
from jitc.supervisor.cluster.topology import Topology, topology_of

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}


def topo(*argv: str, env: dict[str, str] | None = None, **kw) -> Topology | None:
    return topology_of((TORCHRUN, *argv, "train.py"), {**ENV, **(env or {})}, **kw)


def test_static_rendezvous_names_this_node_and_the_store_beside_the_master_port():
    t = topo("--nnodes", "2", "--node-rank", "1", "--master-addr", "head",
             "--master-port", "29600", "--nproc-per-node", "8", "--max-restarts", "3")
    assert t == Topology(nnodes=2, node_rank=1, backend="static", rdzv_host="head",
                         rdzv_port=29600, store_host="head", store_port=29601, job_id="static")


def test_static_defaults_are_torchruns():
    t = topo("--nnodes", "3")
    assert (t.node_rank, t.rdzv_host, t.rdzv_port, t.store_port) == (0, "127.0.0.1", 29500, 29501)


def test_static_with_an_explicit_endpoint_uses_it():
    t = topo("--nnodes", "2", "--rdzv-backend", "static", "--rdzv-endpoint", "h:7000")
    assert (t.rdzv_host, t.rdzv_port, t.node_rank) == ("h", 7000, 0)


def test_c10d_reads_the_endpoint_and_the_rdzv_id_and_leaves_the_rank_to_the_store():
    t = topo("--nnodes", "4:4", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1234",
             "--rdzv-id", "job.7_a-b")
    assert t == Topology(nnodes=4, node_rank=None, backend="c10d", rdzv_host="h",
                         rdzv_port=1234, store_host="h", store_port=1235, job_id="job.7_a-b")


def test_c10d_defaults_port_29400_and_job_id_none_and_reads_ipv6():
    t = topo("--nnodes", "2", "--rdzv_backend=c10d", "--rdzv_endpoint=h")
    assert (t.rdzv_port, t.store_port, t.job_id) == (29400, 29401, "none")
    t = topo("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "[::1]:5000")
    assert (t.rdzv_host, t.rdzv_port, t.store_host) == ("::1", 5000, "::1")


def test_a_coordination_port_given_wins():
    assert topo("--nnodes", "2", coord_port=40000).store_port == 40000


def test_pet_defaults_and_abbreviations_are_read_as_torchrun_reads_them():
    t = topo(env={"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "m",
                  "PET_MASTER_PORT": "3000"})
    assert (t.nnodes, t.node_rank, t.rdzv_host, t.rdzv_port) == (2, 1, "m", 3000)
    t = topo("--nnode", "2", "--node_rank", "1", "--master_addr=x")
    assert (t.nnodes, t.node_rank, t.rdzv_host) == (2, 1, "x")
    cmd = (sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "train.py")
    assert topology_of(cmd, ENV).nnodes == 2


@pytest.mark.parametrize("argv", [
    (), ("--nproc-per-node", "8"), ("--nnodes", "1"), ("--nnodes", "1:1"),
    ("--nnodes", "2", "--standalone"), ("--nproc-per-node", "2", "train.py", "--nnodes", "4"),
], ids=" ".join)
def test_one_node_is_none(argv):
    assert topo(*argv) is None


def test_other_commands_are_none():
    assert topology_of((sys.executable, "train.py", "--nnodes", "2"), ENV) is None


@pytest.mark.parametrize("argv, words", [
    (("--nnodes", "1:2"), "elastic node counts are not supported"),
    (("--nnodes", "2", "--rdzv-backend", "etcd", "--rdzv-endpoint", "h:1"), "etcd is not supported"),
    (("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-id", "a/b"), "--rdzv-id"),
    (("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-id", "x" * 65), "--rdzv-id"),
    (("--nnodes", "2", "--node-rank", "2"), "outside 0..1"),
    (("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:0"), "fixed port"),
    (("--nnodes", "2", "--master-port", "65535"), "coordination port 65536"),
    (("--nnodes", "2", "--rdzv-backend", "static", "--rdzv-endpoint", "h"), "fixed port"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_what_the_supervisors_cannot_coordinate_is_refused_in_one_line(argv, words):
    with pytest.raises(UsageError) as e:
        topo(*argv)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_coordination_port_on_the_rendezvous_port_is_refused():
    with pytest.raises(UsageError, match="coordination port 29500"):
        topo("--nnodes", "2", coord_port=29500)
