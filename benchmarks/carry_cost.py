"""Per-step cost of ``session.carry``: what a rank does twice a step (at the boundary and
before the optimizer step) for its carried values: call the getters, copy tensors to the
CPU, encode the record (jitc-meta/1) and write it into its slot (pwrite + ftruncate).

    python benchmarks/carry_cost.py        # prints microseconds per capture, by payload
"""
from __future__ import annotations

import tempfile
import time

import torch

from jitc import carried, rank_state

CASES = {
    "a float (best_val_loss)": lambda: 3.25,
    "float + 10-entry list": lambda: [3.25, [[i, 1.5 * i] for i in range(10)]],
    "batch 4x16 int64 x2 (tests)": lambda: (torch.zeros(4, 16, dtype=torch.long),) * 2,
    "batch 12x1024 int64 x2 (nanoGPT)": lambda: (torch.zeros(12, 1024, dtype=torch.long),) * 2,
}


def per_capture(store: rank_state.RankStore, get, n: int = 300) -> float:
    getters = {"v": get}
    t0 = time.perf_counter()
    for i in range(n):
        values, devices = carried.capture(getters)
        store.write(i, rank_state.record(0, 0, i, False, values, devices, {}))
    return (time.perf_counter() - t0) / n


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        store = rank_state.RankStore(root, 0)
        for name, get in CASES.items():
            per_capture(store, get, 20)   # warm
            print(f"{name:34s} {per_capture(store, get) * 1e6:8.1f} us per capture")


if __name__ == "__main__":
    main()
