"""Per-step cost of ``session.carry``: what a rank does twice a step (before the optimizer
step and at the boundary) for its carried values: call the getters, copy tensors to the CPU,
encode the record (jitc-meta/1; a value whose tensors did not change in between is encoded
once) and write it into its slot (pwrite + ftruncate).

    python benchmarks/carry_cost.py        # prints microseconds per step, by payload

Then the same inside a real session (``jitc.protect`` in this process, ``JITC_DIR`` a
temporary directory): the time ``Session._keep`` takes per step, the median over the run,
carrying a prefetched batch of ``--batch`` rows of ``--context`` tokens and a float.
"""
from __future__ import annotations

import argparse
import os
import statistics
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


def in_session(root: str, batch: int, context: int, steps: int) -> list[float]:
    import jitc
    os.environ["JITC_DIR"] = os.path.join(root, "snaps")
    model = torch.nn.Linear(context, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    session = jitc.protect(model, opt, seed=0)
    spent: list[float] = []
    keep = session._keep

    def timed(*a, **k):
        t0 = time.perf_counter()
        keep(*a, **k)
        spent.append(time.perf_counter() - t0)
    session._keep = timed
    X = torch.randint(256, (batch, context))
    best = 1e9
    X = session.carry("batch", lambda: X)
    best = session.carry("best", lambda: best)
    for _ in session.steps(steps):
        loss = model(X.float()).mean()
        X = torch.randint(256, (batch, context))      # the prefetch
        loss.backward()
        opt.step()
        opt.zero_grad()
        best = min(best, loss.item())
    # two calls a step: before the optimizer step, at the boundary
    return [a + b for a, b in zip(spent[1::2], spent[2::2])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as root:
        store = rank_state.RankStore(root, 0)
        for name, get in CASES.items():
            per_step(store, get, 20)   # warm
            print(f"{name:34s} {per_step(store, get) * 1e6:8.1f} us per step")
        per = in_session(root, args.batch, args.context, args.steps)
        print(f"in a session, batch {args.batch}x{args.context} int64 + a float: "
              f"{statistics.median(per[10:]) * 1e6:.1f} us per step (median)")


if __name__ == "__main__":
    main()
