"""examples/pipeline_train.py under torchrun on 4 CPU ranks (gloo)."""
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT

SCRIPT = ROOT / "examples" / "pipeline_train.py"
LINE = re.compile(r"^step (\d+) loss ([0-9.]+) grad_norms ((?:[0-9.]+ ?)+)$", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc=4, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(SCRIPT), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [(int(s), float(l), [float(v) for v in n.split()]) for s, l, n in LINE.findall(proc.stdout)]
    assert rows, proc.stdout
    return rows


def test_four_stage_pipeline_loss_decreases(tmp_path):
    rows = torchrun("--stages", "4", "--steps", "30", "--log-every", "5", "--save", str(tmp_path / "m"))
    first, last = rows[0][1], rows[-1][1]
    assert rows[-1][0] == 29
    assert last < first - 2.0, rows                      # ~6.1 -> ~2.7 at 30 steps
    assert all(len(n) == 4 and all(v > 0 for v in n) for _, _, n in rows)   # every stage's norm
    states = [torch.load(tmp_path / f"m.stage{s}.pt") for s in range(4)]
    assert "embed.weight" in states[0] and "head.out.weight" in states[3]
    assert all("embed.weight" not in st and "head.out.weight" not in st for st in states[1:3])
    assert list(states[1]) == list(states[2])            # stage-local names: alike stages match


def test_checkfree_plus_swap_schedule_runs_and_keeps_edge_copies_equal(tmp_path):
    rows = torchrun("--stages", "4", "--steps", "24", "--log-every", "4", "--checkfree-plus",
                    "--save", str(tmp_path / "m"))
    assert rows[-1][1] < rows[0][1] - 2.0, rows
    s = [torch.load(tmp_path / f"m.stage{i}.pt") for i in range(4)]
    assert torch.equal(s[0]["embed.weight"], s[1]["embed.weight"])
    for k in ("head.norm.weight", "head.out.weight"):
        assert torch.equal(s[2][k], s[3][k])
    # The copies trained: they are not the initial weights any more.
    import llama_tiny as L
    init = L.Stage(L.Config(), embed=True).init_weights(0, 0).state_dict()["embed.weight"]
    assert not torch.equal(init, s[0]["embed.weight"])
