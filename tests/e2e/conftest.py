"""Helpers for end-to-end runs: ``jitc supervise -- torchrun examples/ddp_train.py`` on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ddp_train.py"
BIN = Path(sys.executable).parent


@dataclass
class Run:
    code: int
    events: list[dict]
    out: Path
    stderr: str
    run_dir: Path

    def of(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def weights(self) -> dict[str, torch.Tensor]:
        return torch.load(self.out, map_location="cpu", weights_only=True)


def clean_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in list(env):
        if name.startswith("JITC_") or name == "LD_PRELOAD":
            env.pop(name)
    return env


def torchrun(nproc: int, steps: int, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "--monitor-interval", "0.1",
            str(EXAMPLE), "--steps", str(steps), "--save", str(out), "--quiet", *extra]


def supervise(tmp: Path, *, inject=(), nproc=2, steps=30, hang_timeout=3.0, max_restarts=3,
              example_args=(), timeout=300, name="run") -> Run:
    run_dir, out = tmp / name, tmp / f"{name}.pt"
    cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir),
           "--max-restarts", str(max_restarts), "--hang-timeout", str(hang_timeout)]
    for spec in inject:
        cmd += ["--inject", spec]
    cmd += ["--", *torchrun(nproc, steps, out, *example_args)]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    events_file = run_dir / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.exists() else []
    return Run(proc.returncode, events, out, proc.stderr, run_dir)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key].view(torch.uint8) if a[key].dtype != torch.bool else a[key],
                           b[key].view(torch.uint8) if b[key].dtype != torch.bool else b[key]), \
            f"{key} differs"


_REFERENCE: dict = {}


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """Final weights of a fault-free supervised run, computed once per (nproc, steps)."""
    def get(nproc: int, steps: int):
        key = (nproc, steps)
        if key not in _REFERENCE:
            run = supervise(tmp_path_factory.mktemp("reference"), nproc=nproc, steps=steps)
            assert run.code == 0, run.stderr[-3000:]
            _REFERENCE[key] = run.weights()
        return _REFERENCE[key]
    return get
