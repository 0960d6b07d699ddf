"""Fixtures for the supervisor tests: run ``jitc supervise`` over fake ranks.

The fake ranks (fake_rank.py) and launcher (fake_launcher.py) speak the protocol in pure
Python, so these tests exercise the supervisor alone; the preloaded library is whatever
``jitc._lib.lib_path()`` finds (it stays inert in processes that never activate it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAKE_RANK = HERE / "fake_rank.py"
FAKE_LAUNCHER = HERE / "fake_launcher.py"


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
    return [sys.executable, str(FAKE_LAUNCHER), "--nproc", str(nproc), str(FAKE_RANK), *rank_args]


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
