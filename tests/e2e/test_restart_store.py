"""``jitc.init_process_group`` under torchrun's own restarts.

torchrun keeps one store across attempts, so a restarted rank that reads its peer's
address before the peer republished it gets the previous attempt's one. The script below
makes that ordering certain: in attempt 1, rank 1 publishes two seconds late. With the
plain ``dist.init_process_group`` rank 0 then connects to a dead address and attempt 1
fails (``Connection refused``, or a connect timeout after ~100 s: too slow and too
variable to keep as a test); with jitc's, each attempt has its own keys and rank 0 waits
for the fresh one."""
from __future__ import annotations

import subprocess

import pytest

from .conftest import BIN, clean_env

pytestmark = pytest.mark.e2e

SCRIPT = """
import os, time
from datetime import timedelta
import torch, torch.distributed as dist
import jitc
rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt == 1 and rank == 1:
    time.sleep(2)
jitc.init_process_group("gloo", timeout=timedelta(seconds=20))
t = torch.ones(2)
for i in range(3):
    dist.all_reduce(t)
    if attempt == 0 and rank == 1 and i == 1:
        os._exit(3)
print(f"rank {rank} attempt {attempt} sum {t.tolist()}", flush=True)
dist.destroy_process_group()
"""


def test_restarted_ranks_meet_on_fresh_keys(tmp_path):
    script = tmp_path / "restart.py"
    script.write_text(SCRIPT)
    cmd = [str(BIN / "torchrun"), "--max-restarts=1", "--nproc-per-node", "2",
           "--monitor-interval", "0.1", str(script)]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 attempt 1 sum [8.0, 8.0]" in proc.stdout, proc.stdout

