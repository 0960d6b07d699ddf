"""A small rank on the real libjitc.so (through jitc._shim, no torch): it registers a
buffer, runs steps of --step-time seconds, and at --at-step lets one rank fail the way
--fault says while the others wait in the "collective" the failed rank never joins, as
healthy DDP replicas would. Used where the supervisor must meet the real shim (its
watchdog, its limits), not the Python stand-in fake_rank.py.

  real_rank.py --steps N [--step-time S] [--fault hang|exit --rank R --at-step K]
               [--save-limits]

hang: the rank stops inside step K in forward with no progress mark (a straggler that never
reaches the collective); the others are in backward with 3 marks. Both kinds of rank are
reported by the native watchdog. exit: the rank calls os._exit(13) at step K.
Waiting ranks leave (exit 1) once the supervisor releases them. --save-limits: write what
the shim says it obeys (jitc_limits()) to $JITC_RUN_DIR/limits-r<rank>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from jitc._shim import check, ffi_lib

BACKWARD = 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--step-time", type=float, default=0.02)
    ap.add_argument("--fault", choices=("hang", "exit"))
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--at-step", type=int, default=5)
    ap.add_argument("--save-limits", action="store_true")
    args = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ffi, lib = ffi_lib()
    check(lib.jitc_init(rank, rank, world, 0, 1), "jitc_init")
    if args.save_limits:
        path = Path(os.environ["JITC_RUN_DIR"]) / f"limits-r{rank}.json"
        buf = ffi.new("char[]", 1024)
        check(lib.jitc_limits(buf, 1024), "jitc_limits")
        path.write_text(ffi.string(buf).decode())
    weights = np.arange(1024, dtype=np.float32) + rank
    check(lib.jitc_registry_begin(), "registry_begin")
    shape = ffi.new("int64_t[1]", [weights.size])
    check(lib.jitc_registry_add(b"w", ffi.from_buffer(weights), weights.nbytes, b"F32", shape,
                                1, -1), "registry_add")
    check(lib.jitc_registry_commit(), "registry_commit")
    for step in range(args.steps):
        check(lib.jitc_step_begin(step), "step_begin")
        if args.fault and step == args.at_step:
            if rank == args.rank and args.fault == "exit":
                os._exit(13)
            if rank != args.rank:
                lib.jitc_set_phase(BACKWARD)
                for _ in range(3):
                    lib.jitc_mark()
            # Stuck (the straggler) or waiting for it (the others) until released.
            lib.jitc_wait_command(600.0)
            os._exit(1)
        time.sleep(args.step_time)
        weights += 1
    check(lib.jitc_steps_finished(args.steps), "steps_finished")
    lib.jitc_shutdown(1)


if __name__ == "__main__":
    sys.exit(main())
