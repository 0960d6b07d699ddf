"""A stand-in for a training rank that speaks the supervisor protocol (no torch, no shim).

Driven by the environment the supervisor sets (JITC_SOCKET, JITC_ATTEMPT, JITC_INJECT,
JITC_RESUME, JITC_HANG_TIMEOUT) plus argv and a few FAKE_* variables:

  fake_rank.py --steps N [--step-time S] [--no-state]
  FAKE_UNUSABLE=1,2        these ranks answer QUERY with usable=false
  FAKE_DIE_IN_SNAPSHOT=R   rank R SIGKILLs itself when asked to write a stripe (attempt 0)

Faults follow JITC_INJECT (parsed by jitc.faults). At a fault's step the other ranks
"block in the collective" the faulty rank never joins (phase backward, like invariant I1's
step i) and defer SIGTERM until RELEASE, as the shim does. Registered state: four float32
tensors w<i> = completed + i, written as stripes in the docs/internals.md layout.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import zlib  # noqa: F401  (crc32c below is table-driven; zlib is only crc32)
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from jitc import protocol  # noqa: E402
from jitc.faults import parse_specs  # noqa: E402
from jitc.protocol import Msg  # noqa: E402

NTENSORS = 4
NUMEL = 256
FINGERPRINT = "fake-model-v1"
META_KEY = "__jitc_meta__"
SNAPSHOT_FORMAT = "jitc-snapshot/1"   # jitc/snapshot/format.py (not imported: it loads torch)
META_FORMAT = "jitc-meta/1"           # jitc/snapshot/meta.py


def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class Rank:
    def __init__(self, args):
        self.args = args
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.attempt = int(os.environ.get("JITC_ATTEMPT", "0"))
        self.hang_timeout = float(os.environ.get("JITC_HANG_TIMEOUT", "1.0"))
        self.specs = [s for s in parse_specs([os.environ.get("JITC_INJECT", "")])
                      if s.attempt == self.attempt]
        self.step = 0
        self.completed = 0
        self.phase = 0
        self.released = threading.Event()
        self.deferring = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(os.environ["JITC_SOCKET"])
        self.send(Msg.HELLO, rank=self.rank, local_rank=self.rank, world_size=self.world,
                  pid=os.getpid(), attempt=self.attempt, host="fake", shard=0, num_shards=1)
        signal.signal(signal.SIGTERM, self._on_term)
        threading.Thread(target=self._agent, daemon=True).start()

    def send(self, mtype, **body):
        body.setdefault("ts", time.time())
        self.sock.send(protocol.encode(mtype, body))

    def _on_term(self, signum, frame):
        # The shim defers SIGTERM while supervised: recovery may still need this rank's
        # state. RELEASE (or the bounded wait in wait_release) ends it.
        self.deferring = True

    # -- agent: commands from the supervisor ---------------------------------------------
    def _agent(self):
        while True:
            try:
                record = self.sock.recv(protocol.MAX_RECORD)
            except OSError:
                os._exit(1)
            if not record:          # supervisor gone: do not outlive it
                os._exit(1)
            msg = protocol.decode(record)
            if msg.type is Msg.QUERY:
                self.deferring = True
                usable = str(self.rank) not in os.environ.get("FAKE_UNUSABLE", "").split(",")
                self.send(Msg.STATE, completed=self.completed, window_open=False,
                          usable=usable and not self.args.no_state,
                          fingerprint="" if self.args.no_state else FINGERPRINT,
                          nbytes=0 if self.args.no_state else NTENSORS * NUMEL * 4, shard=0)
            elif msg.type is Msg.SNAPSHOT:
                self.deferring = True
                if (os.environ.get("FAKE_DIE_IN_SNAPSHOT") == str(self.rank)
                        and self.attempt == 0):
                    os.kill(os.getpid(), signal.SIGKILL)
                for j, stem in zip(msg.body["stripes"], msg.body["files"]):
                    self._write_stripe(msg.body, j, stem)
            elif msg.type is Msg.RELEASE:
                self.released.set()

    def _write_stripe(self, req, j, stem):
        from safetensors.numpy import save_file
        k, step = req["nstripes"], req["step"]
        d = Path(req["dir"])
        ok = step == self.completed
        if ok:
            tensors = {f"w{i}": np.full(NUMEL, float(step + i), dtype=np.float32)
                       for i in range(NTENSORS) if i % k == j}
            if j == 0:
                meta = json.dumps({"format": META_FORMAT,
                                   "state": {"step": step, "extras": {}}}).encode()
                tensors[META_KEY] = np.frombuffer(meta, dtype=np.uint8).copy()
            path = d / f"{stem}.safetensors"
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata={
                "format": SNAPSHOT_FORMAT, "step": str(step), "fingerprint": FINGERPRINT,
                "stripe": str(j),
                "nstripes": str(k), "shapes": json.dumps({f"w{i}": [NUMEL] for i in range(NTENSORS)})})
            os.replace(tmp, path)
            data = path.read_bytes()
            rec = {"stripe": j, "nstripes": k, "step": step, "bytes": len(data),
                   "crc32c": crc32c(data), "fingerprint": FINGERPRINT}
            path.with_suffix(".done").write_text(json.dumps(rec))
            nbytes, crc, err = len(data), rec["crc32c"], None
        else:
            nbytes, crc, err = 0, 0, f"at step {self.completed}, asked for {step}"
        self.send(Msg.SNAPSHOT_DONE, id=req["id"], rank=self.rank, stripe=j, nstripes=k, ok=ok,
                  step=step, file=f"{stem}.safetensors", bytes=nbytes, crc32c=crc,
                  fingerprint=FINGERPRINT, error=err)

    # -- training ------------------------------------------------------------------------
    def resume(self) -> int:
        manifest = os.environ.get("JITC_RESUME")
        if not manifest:
            return 0
        from safetensors.numpy import load_file
        m = json.loads(Path(manifest).read_text())
        step = m["step"]
        for name, t in m["tensors"].items():
            for file, key, start, end in t["chunks"]:
                arr = load_file(str(Path(manifest).parent / file))[key]
                want = float(step + int(name[1:]))
                if not np.all(arr == want):
                    self.fail("exception", step, detail=f"resumed {name} holds {arr[0]}, want {want}")
                    os._exit(3)
        self.send(Msg.RESUMED, rank=self.rank, step=step, manifest=manifest)
        return step

    def progress(self):
        if not self.args.no_state:
            self.send(Msg.PROGRESS, step=self.step, completed=self.completed, phase=self.phase,
                      step_time=self.args.step_time)

    def fail(self, kind, step, **extra):
        self.send(Msg.FAILURE, rank=self.rank, kind=kind, step=step, phase="forward", **extra)

    def run(self):
        start = self.resume()
        self.completed = start
        for step in range(start, self.args.steps):
            self.step, self.phase = step, 1
            self.progress()
            for spec in self.specs:
                if spec.step == step:
                    if spec.rank == self.rank:
                        self.fire(spec)
                    else:
                        self.block(spec)
            time.sleep(self.args.step_time)
            self.barrier(step)
            self.completed = step + 1
            self.phase = 0
        self.progress()
        self.send(Msg.GOODBYE, rank=self.rank, completed=self.completed)
        self.sock.close()

    def fire(self, spec):
        self.send(Msg.FAULT_INJECTED, rank=self.rank, kind=spec.kind, step=spec.step,
                  phase=spec.phase)
        kind, step = spec.kind, spec.step
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "segv":
            self.fail("signal", step, signal="SIGSEGV", detail="fake segfault")
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGSEGV)
        elif kind == "exception":
            self.fail("exception", step, detail="RuntimeError: injected")
            os._exit(1)
        elif kind == "exit":
            self.fail("exit", step, detail="exit code 13")
            os._exit(13)
        elif kind in ("cuda-error", "nccl-error"):
            error = "cudaErrorIllegalAddress" if kind == "cuda-error" else "ncclSystemError"
            self.fail(kind, step, error=error, code=700 if kind == "cuda-error" else 2)
            os._exit(1)
        elif kind in ("hang", "nccl-hang"):
            # The straggler: stuck early in forward; reports last so that blame cannot
            # come from report order.
            self.deferring = True
            self.phase = 1
            time.sleep(self.hang_timeout + 0.25)
            self.fail(kind, step, progress=[step, 1, 0], elapsed=self.hang_timeout + 0.25,
                      timeout=self.hang_timeout)
            self.wait_release()
        elif kind == "gil-hang":
            # Stuck for good and unable to report: the supervisor's backstop must see it.
            self.deferring = True
            self.wait_release()

    def block(self, spec):
        """Wait in the collective the faulty rank never joins."""
        self.deferring = True
        self.phase = 2
        self.progress()
        if spec.kind == "nccl-error":
            self.fail("peer", spec.step, detail="collective aborted by a peer")
        if spec.kind in ("hang", "nccl-hang"):
            time.sleep(self.hang_timeout)
            self.fail("hang", spec.step, progress=[spec.step, 2, 3], elapsed=self.hang_timeout,
                      timeout=self.hang_timeout)
        self.wait_release()

    def barrier(self, step):
        """The gradient all-reduce: every rank of the attempt must arrive. A rank that died
        never does, so the others block here with completed == step (invariant I1)."""
        d = Path(os.environ["JITC_RUN_DIR"]) / f"fake-barrier-a{self.attempt}"
        d.mkdir(exist_ok=True)
        (d / f"r{self.rank}-s{step}").touch()
        self.phase = 2
        while not all((d / f"r{r}-s{step}").exists() for r in range(self.world)):
            if self.deferring:
                self.progress()
                self.wait_release()
            time.sleep(0.002)

    def wait_release(self):
        self.released.wait(60)
        os._exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--step-time", type=float, default=0.02)
    ap.add_argument("--no-state", action="store_true")
    Rank(ap.parse_args()).run()


if __name__ == "__main__":
    main()
