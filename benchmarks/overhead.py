"""Steady-state cost of jitc on a plain training step.

Paired runs of examples/ddp_train.py in one script, alternating the order in each pair:
  plain       torchrun ... --no-jitc                      (no preload, no protect)
  shim        LD_PRELOAD=libjitc.so torchrun ...          (protect: registry, hooks, meta,
                                                           per-step reseed, native agent)
  supervised  jitc supervise -- torchrun ...              (all of the above + supervisor channel)
Each run reports its per-step wall times (rank 0); the first --warmup steps are dropped.
We report the median step time of each run, and per pair the ratio variant/plain; the
headline is the median of those ratios (target: <= 1.01).

    python benchmarks/overhead.py --pairs 5 --steps 80
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddp_train.py"
BIN = Path(sys.executable).parent


def run(variant: str, args, workdir: Path) -> list[float]:
    timings = workdir / f"{variant}.json"
    train = [str(BIN / "torchrun"), "--nproc-per-node", str(args.nproc), "--monitor-interval", "0.1",
             str(EXAMPLE), "--steps", str(args.steps), "--quiet", "--timings", str(timings),
             "--dim", str(args.dim), "--layers", str(args.layers)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("LD_PRELOAD", "JITC_SOCKET", "JITC_DIR", "JITC_INJECT", "JITC_RESUME"):
        env.pop(name, None)
    if variant == "plain":
        cmd = train + ["--no-jitc"]
    elif variant == "shim":
        from jitc._lib import lib_path
        env["LD_PRELOAD"] = str(lib_path())
        cmd = train
    else:
        cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(workdir / "run"), "--", *train]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=600)
    return json.loads(timings.read_text())["step_s"][args.warmup:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--variants", default="shim,supervised")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    args = p.parse_args()
    variants = args.variants.split(",")
    medians: dict[str, list[float]] = {v: [] for v in ["plain", *variants]}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for variant in variants:
                order = ["plain", variant] if i % 2 == 0 else [variant, "plain"]
                got = {v: statistics.median(run(v, args, Path(tmp))) for v in order}
                medians["plain"].append(got["plain"])
                medians[variant].append(got[variant])
                ratios[variant].append(got[variant] / got["plain"])
                print(f"pair {i} {variant}: plain {got['plain'] * 1e3:.2f} ms, "
                      f"{variant} {got[variant] * 1e3:.2f} ms, ratio {ratios[variant][-1]:.4f}", flush=True)
    result = {
        "benchmark": "overhead", "nproc": args.nproc, "steps": args.steps, "warmup": args.warmup,
        "pairs": args.pairs, "median_step_s": {k: statistics.median(v) for k, v in medians.items()},
        "median_ratio": {k: statistics.median(v) for k, v in ratios.items()},
        "ratios": ratios, "target_ratio": 1.01,
    }
    for variant in variants:
        print(f"{variant}: median ratio {result['median_ratio'][variant]:.4f} (target <= 1.01)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
