"""What the per-step meta record costs: ``Session._meta`` as a rank runs it at every step
boundary (Adam + a scheduler), encoded as jitc-meta/1 (jitc/snapshot/meta.py) against
``pickle.dumps`` of the same dict, and the decode at resume against ``pickle.loads``.

    python benchmarks/meta_cost.py [--n 20000] [--sharding-entries 900]

Prints one line per scheduler (best of 7 repeats, µs per call) and writes
benchmarks/results/meta_cost.json.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import timeit
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jitc.session import Session  # noqa: E402
from jitc.snapshot import meta as M  # noqa: E402

SCHEDULERS = {
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda i: 0.99 ** i),
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 10),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 1000),
}


def session(kind: str) -> SimpleNamespace:
    """What Session._meta reads, after a few steps of a small model."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = SCHEDULERS[kind](opt)
    for _ in range(3):
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        sched.step()
    return SimpleNamespace(optimizer=opt, scheduler=sched, extra_state={}, num_stages=1,
                           stage=0, pipeline=False, checkfree_plus=False, _frozen=None,
                           _has_scalar_state=False, seed=0, _recorded={"grad_norm": 1.25})


def sharding_record(entries: int) -> dict:
    """An FSDP job's meta ``sharding`` record of this many DTensor entries (jitc/sharding.py)."""
    return {"mesh_shape": [2, 2], "mesh_dim_names": ["replicate", "shard"], "coordinate": [1, 1],
            "shard": 1, "num_shards": 2,
            "tensors": {f"model.layers.{i}.w": {"global_shape": [1024, 1024],
                                                "placements": ["R", "S(0)"], "offset": [512, 0],
                                                "local_shape": [512, 1024]}
                        for i in range(entries)}}


def best(fn, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--sharding-entries", type=int, default=900)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "meta_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for kind in SCHEDULERS:
        s = session(kind)
        blob = Session._meta(s, 3)
        state = M.decode(blob)
        pickled = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        row = {
            "scheduler": kind, "bytes": len(blob), "pickle_bytes": len(pickled),
            "session_meta_us": best(lambda: Session._meta(s, 3), a.n),
            "encode_us": best(lambda: M.encode(state), a.n),
            "pickle_dumps_us": best(lambda: pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL),
                                    a.n),
            "decode_us": best(lambda: M.decode(blob), a.n),
            "pickle_loads_us": best(lambda: pickle.loads(pickled), a.n),
        }
        rows.append(row)
        print(f"{kind:18s} Session._meta {row['session_meta_us']:5.1f} µs  (encode "
              f"{row['encode_us']:4.1f} µs vs pickle.dumps {row['pickle_dumps_us']:4.1f} µs; "
              f"{row['bytes']} vs {row['pickle_bytes']} bytes)  decode {row['decode_us']:4.1f} µs"
              f" vs pickle.loads {row['pickle_loads_us']:4.1f} µs")
    # FSDP: the sharding record does not change between steps; Session encodes it once.
    s = session("LambdaLR")
    record = sharding_record(a.sharding_entries)
    plain = M.decode(Session._meta(s, 3))
    s._frozen = M.Frozen("sharding", record)
    row = {"sharding_entries": a.sharding_entries,
           "encoded_each_step_us": best(lambda: M.encode({**plain, "sharding": record}), a.n // 100),
           "frozen_session_meta_us": best(lambda: Session._meta(s, 3), a.n // 100)}
    rows.append(row)
    print(f"FSDP sharding record of {a.sharding_entries} entries: encoded each step "
          f"{row['encoded_each_step_us']:.0f} µs, Session._meta with it frozen "
          f"{row['frozen_session_meta_us']:.1f} µs")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
