"""Several "nodes" on one machine: one ``jitc supervise`` per node, each with its own run
directory that no other node can read.

Each node runs in its own mount namespace (``unshare -m``) in which every other node's
directory is covered by an empty tmpfs: a node that opened a file of another node's disk
would find nothing there, and the run would fail. Without the privilege for that (not
root), the nodes run side by side and the test says so in its id.

    with Cluster(tmp, nnodes=2, per_node=2, steps=16) as c:
        c.start()
        c.wait()
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import torch

from tests.e2e.conftest import BIN, ROOT, clean_env

SCRIPT = ROOT / "tests" / "e2e" / "busy_rank_train.py"
UNSHARE = shutil.which("unshare")


def isolation() -> bool:
    """Whether each node can be given a mount namespace of its own here."""
    if os.geteuid() != 0 or UNSHARE is None:
        return False
    p = subprocess.run([UNSHARE, "-m", "--propagation", "private", "true"],
                       capture_output=True, timeout=30)
    return p.returncode == 0


ISOLATED = isolation()


def free_ports(n: int) -> int:
    """A base port with ``n`` consecutive free ports (the rendezvous and the store), below
    the kernel's ephemeral range: a port the OS hands out for an outgoing connection or a
    port-0 listener (the nodes' file servers, gloo) cannot take it meanwhile."""
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        base = rng.randrange(10000, max(10001, low - n))
        ok = True
        for p in range(base, base + n):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def events(run_dir: Path) -> list[dict]:
    f = run_dir / "events.jsonl"
    try:
        return [json.loads(x) for x in f.read_text().splitlines()]
    except OSError:
        return []


class Cluster:
    def __init__(self, tmp: Path, *, nnodes: int = 2, per_node: int = 2, steps: int = 16,
                 busy: float = 0.1, inject: tuple[str, ...] = (), hang_timeout: float = 3.0,
                 node_timeout: float = 2.0, join_timeout: float = 60.0, extra: tuple = (),
                 rdzv: str = "static", script: Path = SCRIPT, script_args: tuple | None = None):
        self.tmp = tmp
        self.nnodes, self.per_node, self.steps, self.busy = nnodes, per_node, steps, busy
        self.inject, self.hang_timeout = inject, hang_timeout
        self.node_timeout, self.join_timeout, self.extra = node_timeout, join_timeout, extra
        self.rdzv, self.script, self.script_args = rdzv, script, script_args
        self.nodes_dir = tmp / "nodes"
        self.nodes_dir.mkdir(parents=True, exist_ok=True)
        self.out = tmp / "out.pt"
        self.progress = tmp / "progress"
        self.port = free_ports(2)
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, Path] = {}

    def run_dir(self, node: int) -> Path:
        return self.nodes_dir / f"node{node}"

    def command(self, node: int) -> list[str]:
        cmd = [str(BIN / "jitc"), "supervise", "--run-dir", str(self.run_dir(node)),
               "--hang-timeout", str(self.hang_timeout), "--max-restarts", "3",
               "--node-timeout", str(self.node_timeout), "--join-timeout", str(self.join_timeout)]
        for spec in self.inject:
            cmd += ["--inject", spec]
        cmd += ["--", str(BIN / "torchrun"), "--nnodes", str(self.nnodes)]
        if self.rdzv == "c10d":     # node ranks assigned by the rendezvous, not given
            cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{self.port}",
                    "--rdzv-id", "jitc-test"]
        else:
            cmd += ["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port",
                    str(self.port)]
        cmd += ["--nproc-per-node", str(self.per_node), "--monitor-interval", "0.1",
                str(self.script)]
        if self.script_args is not None:
            cmd += [*self.script_args, "--save", str(self.out)]
        else:
            cmd += ["--steps", str(self.steps), "--busy", str(self.busy), "--save", str(self.out),
                    "--progress", str(self.progress), *self.extra]
        if not ISOLATED:
            return cmd
        # Every other node's directory: an empty tmpfs in this node's namespace.
        others = [self.run_dir(n) for n in range(self.nnodes) if n != node]
        mounts = " && ".join(f"mkdir -p {o} && mount -t tmpfs -o mode=0700 jitc-other {o}"
                             for o in others)
        return [UNSHARE, "-m", "--propagation", "private", "sh", "-c",
                f'{mounts} && exec "$@"', "node", *cmd]

    def start(self, node: int | None = None) -> None:
        for n in ([node] if node is not None else range(self.nnodes)):
            if n and node is None and self.rdzv == "c10d":
                time.sleep(0.5)     # node 0 first: the supervisor that hosts the store
            self.logs[n] = self.tmp / f"node{n}.log"
            with open(self.logs[n], "ab") as log:
                self.procs[n] = subprocess.Popen(self.command(n), env=clean_env(), stdout=log,
                                                 stderr=subprocess.STDOUT,
                                                 start_new_session=True)

    def wait(self, timeout: float = 240) -> dict[int, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for n, p in self.procs.items():
            codes[n] = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        return codes

    def at_step(self, step: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self._progress() < step:
            assert time.monotonic() < deadline, f"the job never reached step {step}"
            assert all(p.poll() is None for p in self.procs.values()), self.tail()
            time.sleep(0.02)

    def _progress(self) -> int:
        try:
            return int(self.progress.read_text())
        except (OSError, ValueError):
            return -1

    def kill_node(self, node: int) -> list[int]:
        """SIGKILL every process of the node (its supervisor's session): a machine lost."""
        p = self.procs[node]
        pids = [p.pid] + [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        os.killpg(p.pid, signal.SIGKILL)
        for pid in pids:                  # re-parented ranks may have left the session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(timeout=30)
        return pids

    def kill_launcher(self, node: int) -> None:
        """SIGKILL only the node's torchrun."""
        start = [e for e in self.events(node) if e["event"] == "start"][-1]
        os.kill(start["pid"], signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Live processes of this cluster's jobs (their command line names its output)."""
        mine = str(self.out)
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and mine in (p.info["cmdline"] or []):
                    found.append(p.pid)
            except psutil.Error:
                continue
        return found

    def events(self, node: int) -> list[dict]:
        return events(self.run_dir(node))

    def of(self, node: int, name: str) -> list[dict]:
        return [e for e in self.events(node) if e["event"] == name]

    def weights(self) -> dict[str, torch.Tensor]:
        return torch.load(self.out, map_location="cpu", weights_only=True)

    def tail(self, chars: int = 6000) -> str:
        out = []
        for n, log in sorted(self.logs.items()):
            try:
                text = log.read_text(errors="replace")
            except OSError:
                text = ""
            out.append(f"--- node {n} ---\n{text[-chars:]}")
        return "\n".join(out)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=30)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
