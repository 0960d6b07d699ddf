"""A command that can span several nodes is refused before anything starts (issue 12,
first step): two supervisors recovering one job separately give silently wrong weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jitc.supervisor.nodes import multi_node_reason

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}

MULTI = [
    ["--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port",
     "29500", "--nproc-per-node", "1", "train.py"],
    ["--nnodes=1:2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29400", "train.py"],
    ["--nnodes", "2", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:29400", "train.py"],
    ["--nnode", "4", "train.py"],                     # argparse abbreviation, as torchrun takes it
]
SINGLE = [
    ["--nproc-per-node", "2", "train.py"],
    ["--nproc_per_node=2", "--master-addr", "127.0.0.1", "--master-port", "1", "train.py"],
    ["--nnodes", "1", "--nproc-per-node", "2", "train.py"],
    ["--nnodes", "1:1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:1", "train.py"],
    ["--standalone", "--nproc-per-node", "2", "train.py"],
    ["--nproc-per-node", "2", "train.py", "--nnodes", "4"],   # the script's own argument
]


@pytest.mark.parametrize("argv", MULTI, ids=lambda a: " ".join(a))
def test_multi_node_torchrun_is_refused_before_anything_starts(tmp_path, argv):
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "jitc.cli", "supervise", "--run-dir", str(run_dir),
                        "--", TORCHRUN, *argv], capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "multi-node" in lines[0] and "--nnodes" in lines[0], p.stderr
    assert not run_dir.exists()


def test_python_m_torch_distributed_run_and_pet_defaults_are_read_as_torchrun_reads_them():
    cmd = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "train.py")
    assert multi_node_reason(cmd, ENV) is None
    assert "--nnodes 3" in multi_node_reason(cmd, {**ENV, "PET_NNODES": "3"})
    assert "--nnodes 2" in multi_node_reason((TORCHRUN, "--nnodes", "2", "t.py"), ENV)


@pytest.mark.parametrize("argv", SINGLE, ids=lambda a: " ".join(a))
def test_single_node_torchrun_is_accepted(argv):
    assert multi_node_reason((TORCHRUN, *argv), ENV) is None


def test_other_commands_are_not_torchrun():
    assert multi_node_reason((sys.executable, "train.py", "--nnodes", "2"), ENV) is None
    assert multi_node_reason(("sh", "-c", "torchrun --nnodes 2 x.py"), ENV) is None
