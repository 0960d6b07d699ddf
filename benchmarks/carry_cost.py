"""Per-step cost of ``session.carry``: what a rank does twice a step (before the optimizer
step and at the boundary) for its carried values: call the getters, copy tensors to the CPU,
encode the record (jitc-meta/1; a value whose tensors did not change in between is encoded
once) and write it into its slot (pwrite + ftruncate).

    python benchmarks/carry_cost.py        # prints microseconds per step, by payload
"""
from __future__ import annotations

import tempfile
import time

import torch

from jitc import carried, rank_state
from jitc.snapshot import meta

CASES = {
    "a float (best_val_loss)": lambda: 3.25,
    "float + 10-entry list": lambda: [3.25, [[i, 1.5 * i] for i in range(10)]],
    "batch 4x16 int64 x2 (tests)": lambda: (torch.zeros(4, 16, dtype=torch.long),
                                            torch.zeros(4, 16, dtype=torch.long)),
    "batch 12x1024 int64 x2 (nanoGPT)": lambda: (torch.zeros(12, 1024, dtype=torch.long),
                                                 torch.zeros(12, 1024, dtype=torch.long)),
}


def per_step(store: rank_state.RankStore, get, n: int = 300) -> float:
    """Two captures of one step: before the optimizer step and at the boundary, the value
    new each step (as a prefetched batch is) and unchanged between the two."""
    captures = carried.Captures(meta.encode)
    t0 = time.perf_counter()
    for i in range(n):
        value = get()
        getters = {"v": lambda: value}
        for provisional in (True, False):
            blobs, devices = captures.capture(getters)
            store.write(i, rank_state.record(0, 0, i, provisional, blobs, devices, {}))
    return (time.perf_counter() - t0) / n


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        store = rank_state.RankStore(root, 0)
        for name, get in CASES.items():
            per_step(store, get, 20)   # warm
            print(f"{name:34s} {per_step(store, get) * 1e6:8.1f} us per step")


if __name__ == "__main__":
    main()
