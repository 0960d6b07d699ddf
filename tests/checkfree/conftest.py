"""Shared helpers for the CheckFree tests: make examples/ and benchmarks/ importable."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
for sub in ("examples", "benchmarks"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
