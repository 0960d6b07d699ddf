"""Fixtures for the supervisor tests: run ``jitc supervise`` over real ranks.

The ranks (real_rank.py) are small Python processes on the real libjitc.so, preloaded by
the supervisor as for any job; the launcher (fake_launcher.py) is a torchrun stand-in that
starts them. cuda_stubs builds the stub CUDA runtime and NCCL of tests/interpose, for ranks
whose injected cuda-error and nccl-error faults fire in the shim's interposers.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REAL_RANK = HERE / "real_rank.py"
FAKE_LAUNCHER = HERE / "fake_launcher.py"
STUBS = REPO / "tests" / "interpose" / "stubs"


@dataclass
class Run:
    rc: int
    stderr: str
    run_dir: Path

    @property
    def events(self) -> list[dict]:
        path = self.run_dir / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]


def supervise_argv(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from jitc.cli import main; main()", "supervise",
            "--run-dir", str(run_dir), *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def fake_job(nproc: int, *rank_args: str) -> list[str]:
    """The fake launcher starting ``nproc`` real ranks (real_rank.py ``rank_args``)."""
    return [sys.executable, str(FAKE_LAUNCHER), "--nproc", str(nproc), str(REAL_RANK), *rank_args]


@pytest.fixture(scope="session")
def cuda_stubs(tmp_path_factory) -> Path:
    """A directory with the stub libcudart.so.13 and libnccl.so.2 (real_rank.py --stubs)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not available")
    out = tmp_path_factory.mktemp("stubs")
    for src, soname in (("cudart", "libcudart.so.13"), ("nccl", "libnccl.so.2")):
        subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-fPIC", "-shared",
                        f"-Wl,-soname,{soname}", "-o", str(out / soname), str(STUBS / f"{src}.c")],
                       check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture
def supervise(tmp_path):
    """supervise(args..., job=[...], env={...}, timeout=30) -> Run."""
    counter = iter(range(1000))

    def run(*args: str, job: list[str], env: dict[str, str] | None = None,
            timeout: float = 40) -> Run:
        run_dir = tmp_path / f"run{next(counter)}"
        proc = subprocess.run(supervise_argv(run_dir, *args, "--", *job),
                              env=child_env(**(env or {})), capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path)
        return Run(proc.returncode, proc.stderr, run_dir)

    return run
