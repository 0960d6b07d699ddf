"""What ``jitc supervise`` accepts of a multi-node command, before anything starts: a fixed
number of nodes with the static or c10d rendezvous (tests/cluster/ runs them); what the
supervisors cannot coordinate is refused with one line and exit 2, nothing created."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jitc.supervisor.cluster.topology import topology_of

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}

REFUSED = [
    (["--nnodes=1:2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29400", "t.py"],
     "elastic"),
    (["--nnodes", "2", "--rdzv-backend", "etcd", "--rdzv-endpoint", "127.0.0.1:2379", "t.py"],
     "etcd"),
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1", "t.py"], "--node-rank 2"),
]


@pytest.mark.parametrize("argv,says", REFUSED, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_what_the_supervisors_cannot_coordinate_is_refused_before_anything_starts(tmp_path, argv,
                                                                                  says):
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "jitc.cli", "supervise", "--run-dir", str(run_dir),
                        "--", TORCHRUN, *argv], capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], p.stderr
    assert not run_dir.exists()


def test_a_multi_node_command_is_read_as_torchrun_reads_it():
    cmd = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "train.py")
    assert topology_of(cmd, ENV) is None
    topo = topology_of(cmd, {**ENV, "PET_NNODES": "3", "PET_NODE_RANK": "2"})
    assert (topo.nnodes, topo.node_rank, topo.store_port) == (3, 2, 29501)
    assert topology_of((TORCHRUN, "--nnode", "2", "t.py"), ENV).nnodes == 2   # abbreviation
    assert topology_of((TORCHRUN, "--nproc-per-node", "2", "t.py", "--nnodes", "4"), ENV) is None
    assert topology_of((sys.executable, "train.py", "--nnodes", "2"), ENV) is None
    assert topology_of(("sh", "-c", "torchrun --nnodes 2 x.py"), ENV) is None
