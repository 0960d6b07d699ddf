"""Recovery timeline for a model whose training state is >= 1 GB.

One supervised run of examples/ddp_train.py (a ~100M-parameter transformer: fp32 weights +
AdamW moments = ~1.2 GB per replica) in which rank 1 is killed; every phase of the recovery
is read off the supervisor's event log and the example's own trace:

  detect    fault_injected -> failure_detected
  snapshot  snapshot_requested -> snapshot_done (and its bandwidth)
  stop      snapshot_done -> job_stopped (0 when the job was stopped while the snapshot was
            published: the planner stops it once every stripe is written)
  launch    restart -> the new rank process starts
  init      process start -> training script ready (imports, process group, model build)
  restore   ready -> protect() returned (load + verify + copy into the model)
  first     protect() returned -> first step done

    python benchmarks/recovery_timeline.py            # writes benchmarks/results/recovery_timeline.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def first(events, name, **match):
    for e in events:
        if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
            return e
    raise SystemExit(f"no {name} {match} in the log")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--fault-step", type=int, default=3)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recovery_timeline.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "build") as tmp:
        tmp = Path(tmp)
        trace, run_dir = tmp / "trace.jsonl", tmp / "run"
        cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(run_dir), "--hang-timeout", "120",
               "--inject", f"crash@rank=1,step={args.fault_step}", "--",
               str(BIN / "torchrun"), "--nproc-per-node", str(args.nproc), "--monitor-interval", "0.1",
               str(ROOT / "examples" / "ddp_train.py"), "--steps", str(args.fault_step + 2),
               "--dim", str(args.dim), "--layers", str(args.layers), "--heads", "8",
               "--batch-size", "1", "--context", "16", "--quiet", "--trace", str(trace)]
        t0 = time.time()
        proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                              text=True, timeout=1800)
        wall = time.time() - t0
        if proc.returncode != 0:
            sys.exit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        ev, tr = lines(run_dir / "events.jsonl"), lines(trace)
    fault, detected = first(ev, "fault_injected"), first(ev, "failure_detected", root_cause=True)
    requested, done = first(ev, "snapshot_requested"), first(ev, "snapshot_done")
    stopped, restart = first(ev, "job_stopped"), first(ev, "restart")
    # The trace's last "start"/"resume_point"/"first_step_done" belong to the restarted job.
    ready1 = [e for e in tr if e["event"] == "start"][-1]
    resumed = [e for e in tr if e["event"] == "resume_point"][-1]
    first_done = [e for e in tr if e["event"] == "first_step_done"][-1]
    phases = {
        "detect": detected["ts"] - fault["ts"],
        "snapshot": done["ts"] - requested["ts"],
        "stop": max(0.0, stopped["ts"] - done["ts"]),
        "launch": ready1["ts_process"] - restart["ts"],
        "init": ready1["ts"] - ready1["ts_process"],
        "restore": resumed["ts"] - ready1["ts"],
        "first_step": first_done["ts"] - resumed["ts"],
    }
    total = first_done["ts"] - fault["ts"]
    to_restart = restart["ts"] - fault["ts"]
    nbytes = done.get("bytes", 0)
    result = {"benchmark": "recovery_timeline", "state_bytes": nbytes, "nproc": args.nproc,
              "dim": args.dim, "layers": args.layers, "phases_s": phases,
              "fault_to_first_step_s": total, "fault_to_restart_s": to_restart, "run_wall_s": wall,
              "snapshot_GBps": nbytes / phases["snapshot"] / 1e9 if phases["snapshot"] > 0 else None,
              "resumed_step": resumed["step"], "fault_step": args.fault_step}
    print(f"state {nbytes / 1e9:.2f} GB over {args.nproc - 1} healthy replica(s)")
    for name, seconds in phases.items():
        print(f"  {name:<10} {seconds:7.2f} s")
    print(f"  {'to restart':<10} {to_restart:7.2f} s  (fault -> restart event)")
    print(f"  {'total':<10} {total:7.2f} s  (fault -> first step after restart)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
