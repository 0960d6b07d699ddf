"""A small training rank on the real libjitc.so (through jitc._shim, no torch): what the
supervisor's integration tests run, so that the supervisor meets the real shim (its agent,
watchdog, snapshot writer, SIGTERM deferral and failure reports), not a re-implementation.

  real_rank.py --steps N [--step-time S] [--no-shim | --no-state] [--die-in-snapshot R]
               [--sigstop R:K] [--stubs DIR] [--save-limits]

State: four float32 buffers w<i> registered with the shim, holding completed + i, and the
meta record {"completed": step}. A step, as jitc.protect() marks one: jitc_step_begin,
forward (--step-time), backward (three marks), the gradient all-reduce (a file barrier in
$JITC_RUN_DIR that every rank of the attempt must reach), then the optimizer window in which
the buffers advance. A rank that never reaches the barrier leaves the others waiting in it
with completed == that step (invariant I1), as healthy DDP replicas wait in NCCL, until the
supervisor releases them.

Faults: $JITC_INJECT through jitc.faults, fired where a session fires them (forward after
step_begin, backward after the first mark, optimizer before the window). crash, segv, exit,
hang and gil-hang are jitc.faults' own; an exception is reported as the session's excepthook
reports it. cuda-error and nccl-error are armed in the shim and fire at the next interposed
call: with --stubs DIR (stub libcudart/libnccl, tests/interpose/stubs) every step makes a
CUDA sync and an all-reduce through the interposers. The nccl-error rank aborts the
collective and its peers report a "peer" failure, as after a communicator abort. A rank
about to hang arrives LATE_S late to its step, so its watchdog reports after its peers'.

Resume: the stripes $JITC_RESUME's manifest names are read with safetensors (jitc.snapshot.load
would import torch, seconds a rank; the tests verify the snapshot with it instead) and the
rank exits 3 unless w<i> == step + i.

--no-shim: the library is never activated (a script that neither calls protect() nor makes a
CUDA call); faults fire unannounced. --no-state: the shim is active (HELLO, fault reports)
but nothing is registered and neither steps nor phases are counted: a job whose CUDA calls
activated the shim but that never called protect(). --die-in-snapshot R: on attempt 0 rank R holds its optimizer window open while it waits in the collective, so
a stripe asked of it waits for the window (csrc/agent.cpp), and SIGKILLs itself once a
snapshot directory exists in $JITC_DIR. --save-limits: write what the shim says it obeys (jitc_limits())
to $JITC_RUN_DIR/limits-r<rank>.json. --sigstop R:K: on attempt 0 rank R stops itself
(SIGSTOP) in step K's forward: the whole process stops, its watchdog with it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from jitc import faults, failures
from jitc._shim import check, ffi_lib
from jitc.errors import InjectedFault

NTENSORS, NUMEL = 4, 256
PHASE = {"forward": 1, "backward": 2, "optimizer": 3}   # jitc_phase (csrc/jitc.h)
CMD_RELEASE = 1                                          # jitc_command
META_FORMAT = "jitc-meta/1"   # jitc/snapshot/meta.py (not imported: jitc.snapshot loads torch)
POLL_S = 0.005
LATE_S = 0.15     # < the supervisor's settle window (0.3 s), > the watchdog's tick (~50 ms)
LINGER_S = 120.0  # as jitc/excepthook.py: the supervisor releases us long before
HANG_KINDS = ("hang", "gil-hang", "nccl-hang")


class Rank:
    def __init__(self, args):
        self.args = args
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.attempt = int(os.environ.get("JITC_ATTEMPT", "0"))
        self.run_dir = Path(os.environ["JITC_RUN_DIR"])
        self.barrier_dir = self.run_dir / f"barrier-a{self.attempt}"
        self.barrier_dir.mkdir(exist_ok=True)
        self.specs = [s for s in faults.parse_specs([os.environ.get("JITC_INJECT", "")])
                      if s.rank == self.rank and s.attempt == self.attempt]
        self.counted = not args.no_state
        self.dying = args.die_in_snapshot == self.rank and self.attempt == 0
        self.cuda = self.nccl = None
        if args.stubs:   # before jitc_init: the interposers resolve the real functions lazily
            mode = os.RTLD_NOW | os.RTLD_GLOBAL
            ctypes.CDLL(str(Path(args.stubs) / "libcudart.so.13"), mode=mode)
            ctypes.CDLL(str(Path(args.stubs) / "libnccl.so.2"), mode=mode)
            scope = ctypes.CDLL(None)   # libjitc.so is preloaded: its wrappers come first
            self.cuda, self.nccl = scope.cudaDeviceSynchronize, scope.ncclAllReduce
            self.nccl.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                  ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.ffi, self.lib = ffi_lib()
        check(self.lib.jitc_init(self.rank, self.rank, self.world, 0, 1), "jitc_init")
        self.weights = [np.zeros(NUMEL, dtype=np.float32) for _ in range(NTENSORS)]
        if self.counted:
            self._register()
        self.injector = faults.Injector(self.specs, self.rank, self.attempt, self._announce)

    # -- the shim's side of protect() ------------------------------------------------------
    def _register(self) -> None:
        lib, ffi = self.lib, self.ffi
        check(lib.jitc_registry_begin(), "registry_begin")
        for i, w in enumerate(self.weights):
            shape = ffi.new("int64_t[1]", [NUMEL])
            check(lib.jitc_registry_add(f"w{i}".encode(), ffi.from_buffer(w), w.nbytes, b"F32",
                                        shape, 1, -1), f"register w{i}")
        check(lib.jitc_registry_commit(), "registry_commit")

    def _set_meta(self, completed: int) -> None:
        meta = json.dumps({"format": META_FORMAT, "state": {"completed": completed}}).encode()
        check(self.lib.jitc_set_meta(meta, len(meta)), "set_meta")

    def _announce(self, spec) -> None:
        self.lib.jitc_report_fault_injected(spec.kind.encode(), spec.step, PHASE[spec.phase])

    def _fire(self, step: int, phase: str) -> None:
        try:
            self.injector.maybe_fire(step, phase, arm=lambda k: check(
                self.lib.jitc_fault_arm(k.encode()), f"arm {k}"))
        except InjectedFault as e:   # what Session._on_exception does with it
            self.lib.jitc_report_failure(failures.EXCEPTION.encode(),
                                         f"{type(e).__name__}: {e}".encode())
            self.lib.jitc_wait_command(LINGER_S)
            os._exit(1)

    def resume(self) -> int:
        """Read the snapshot $JITC_RESUME names into the buffers; its step."""
        manifest = os.environ.get("JITC_RESUME")
        if not manifest:
            return 0
        from safetensors.numpy import load_file
        m = json.loads(Path(manifest).read_text())
        files: dict[str, dict] = {}
        for i, w in enumerate(self.weights):
            chunks = sorted(m["tensors"][f"w{i}"]["chunks"], key=lambda c: c[2])
            parts = [files.setdefault(f, load_file(str(Path(manifest).parent / f)))[key]
                     for f, key, _, _ in chunks]
            got = np.concatenate([p.reshape(-1) for p in parts])
            if not np.all(got == m["step"] + i):
                print(f"rank {self.rank}: resumed w{i} holds {got[0]}, want {m['step'] + i}",
                      file=sys.stderr)
                os._exit(3)
            w[:] = got
        self.lib.jitc_report_resumed(m["step"], manifest.encode())
        return m["step"]

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        start = self.resume()
        if start == 0:
            for i, w in enumerate(self.weights):
                w[:] = i
        for step in range(start, self.args.steps):
            if any(s.step == step and s.kind in HANG_KINDS for s in self.specs):
                time.sleep(LATE_S)
            if self.counted:
                self._set_meta(step)
                check(self.lib.jitc_step_begin(step), "step_begin")
            self._fire(step, "forward")
            if self.args.sigstop == [self.rank, step] and self.attempt == 0:
                os.kill(os.getpid(), signal.SIGSTOP)
            time.sleep(self.args.step_time)
            if self.cuda is not None and self.cuda() != 0:
                os._exit(1)            # torch raises on a CUDA error; the shim reported it
            if self.counted:
                self.lib.jitc_set_phase(PHASE["backward"])
            self.lib.jitc_mark()
            self._fire(step, "backward")
            self.lib.jitc_mark()
            self.lib.jitc_mark()
            self.allreduce(step)
            self._fire(step, "optimizer")
            if self.counted:
                check(self.lib.jitc_optimizer_begin(600.0), "optimizer_begin")
            for w in self.weights:
                w += 1
            if self.counted:
                self.lib.jitc_optimizer_end()
        if self.counted:
            self._set_meta(self.args.steps)
            check(self.lib.jitc_steps_finished(self.args.steps), "steps_finished")
        self.lib.jitc_shutdown(1)

    def allreduce(self, step: int) -> None:
        if self.nccl is not None and self.nccl(None, None, 1, 7, 0, 0x4, None) != 0:  # stub comm
            (self.barrier_dir / "aborted").touch()   # the communicator is aborted for all
            os._exit(1)
        (self.barrier_dir / f"r{self.rank}-s{step}").touch()
        if self.dying:
            check(self.lib.jitc_optimizer_begin(0.0), "optimizer_begin")
        peer_reported = False
        while not all((self.barrier_dir / f"r{r}-s{step}").exists() for r in range(self.world)):
            if self.dying and any(p.is_dir() for p in Path(os.environ["JITC_DIR"]).iterdir()):
                os.kill(os.getpid(), signal.SIGKILL)
            if not peer_reported and (self.barrier_dir / "aborted").exists():
                peer_reported = True
                self.lib.jitc_report_failure(failures.PEER.encode(),
                                             b"collective aborted by a peer")
            if self.lib.jitc_wait_command(POLL_S) == CMD_RELEASE:
                os._exit(1)
        if self.dying:
            self.lib.jitc_optimizer_end()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--step-time", type=float, default=0.02)
    ap.add_argument("--no-state", action="store_true")
    ap.add_argument("--die-in-snapshot", type=int)
    ap.add_argument("--sigstop", type=lambda t: [int(x) for x in t.split(":")], metavar="R:K")
    ap.add_argument("--stubs")
    ap.add_argument("--save-limits", action="store_true")
    ap.add_argument("--no-shim", action="store_true")
    args = ap.parse_args()
    if args.no_shim:   # a plain script: the preloaded library stays inert
        specs = faults.parse_specs([os.environ.get("JITC_INJECT", "")])
        mine = [s for s in specs if s.rank == int(os.environ["RANK"])
                and s.attempt == int(os.environ.get("JITC_ATTEMPT", "0"))]
        for step in range(args.steps):
            for spec in (s for s in mine if s.step == step):
                faults.fire(spec)
            time.sleep(args.step_time)
        return
    rank = Rank(args)
    if args.save_limits:
        buf = rank.ffi.new("char[]", 1024)
        check(rank.lib.jitc_limits(buf, 1024), "jitc_limits")
        (rank.run_dir / f"limits-r{rank.rank}.json").write_text(rank.ffi.string(buf).decode())
    rank.run()


if __name__ == "__main__":
    main()
