"""Warm workers for a standby torchrun: loaded by path by standby_prog.py, never imported
as part of jitc (stdlib only, plus the torch modules torchrun has loaded already).

torchrun starts every worker as a fresh ``python -u SCRIPT ARGS``, which imports torch
again: about 2 s of every restart here (two workers importing at once on 2 cores). The
standby launcher has imported torch already. At the go, before torchrun runs a line (the
process has a single thread then), ``prefork`` forks one copy of it per local worker the
command asks for, and wraps torchrun's ``SubprocessHandler._popen``: a worker whose command
is the expected ``python -u SCRIPT ...`` and whose environment is the one the copies
imported under (but for the variables torchrun sets per worker, PER_WORKER) is handed to a
copy, which takes its argv, environment, working directory and output files over a pipe
and runs SCRIPT as ``__main__``; torchrun gets a ``Popen`` of the copy. Anything else, or
more workers than copies (torchrun's own restarts), starts cold, as torchrun would.

A copy differs from a fresh interpreter in what it inherited: the modules the standby
imported (checked to have been imported under the worker's environment, as above) and the
hash seed. ``random`` reseeds itself at a fork; numpy's global generator is reseeded here.
Copies that are never handed out exit when torchrun does (their pipe closes).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time

# Set by torchrun for each worker (LocalElasticAgent._start_workers) or by jitc for each
# attempt; none is read by an import (CUDA_VISIBLE_DEVICES: at CUDA's initialisation).
PER_WORKER = frozenset({
    "RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "WORLD_SIZE", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "CUDA_VISIBLE_DEVICES", "JITC_ATTEMPT", "JITC_RESUME"})
PER_WORKER_PREFIX = "TORCHELASTIC_"
PORT_WAIT_S = 10.0
PORT_POLL_S = 0.02


def parse(argv: list[str]):
    """torchrun's own reading of ``argv`` (its parser), or None where it rejects it: the
    real run reports a bad command line."""
    try:
        from torch.distributed import run as trun
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return trun.get_args_parser().parse_args(argv[1:])
    except (ImportError, AttributeError, SystemExit):
        return None


def expected_workers(args) -> tuple[int, str | None]:
    """(local workers, training script) that torchrun's parsed ``args`` start; (0, None)
    where they do not start ``python -u SCRIPT`` workers in a known number."""
    if args is None or args.no_python or args.module or args.run_path:
        return 0, None
    nproc = str(args.nproc_per_node)
    return (int(nproc), args.training_script) if nproc.isdigit() else (0, None)


def wait_for_store_port(args, limit_s: float = PORT_WAIT_S) -> bool:
    """For static rendezvous on node 0, wait (bounded) until torchrun's store can listen on
    --master-port: the previous attempt's launcher held it, and a restart that tries to bind
    it a moment too early fails with EADDRINUSE (seen: the old listener lingered ~1 s after
    the old torchrun had been reaped) and costs a whole attempt. False if it never freed."""
    if (args is None or args.standalone or args.rdzv_backend != "static" or args.node_rank != 0
            or not str(args.master_port or "").isdigit()):
        return True
    deadline = time.monotonic() + limit_s
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the store does
            try:
                probe.bind(("", int(args.master_port)))
                probe.listen(1)
                return True
            except OSError:
                pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(PORT_POLL_S)


def prefork(args, import_env: dict[str, str]) -> dict | None:
    """Fork the copies for torchrun's parsed ``args`` and install the hand-out. In the
    launcher: None. In a copy, once it was handed a worker: that worker's spec (its
    environment, cwd and output are set)."""
    count, script = expected_workers(args)
    if count <= 0:
        return None
    try:
        from torch.distributed.elastic.multiprocessing.subprocess_handler import (
            subprocess_handler as sh)
        real = sh.SubprocessHandler._popen
    except (ImportError, AttributeError):
        return None
    copies: list[tuple[int, int]] = []      # (pid, write end of its pipe)
    for _ in range(count):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for _, other in copies:
                os.close(other)
            os.close(w)
            return _wait_for_work(r)
        os.close(r)
        copies.append((pid, w))

    def _popen(handler, args, env):
        proc = _hand_out(copies, script, import_env, args, env,
                         getattr(handler, "_stdout", None), getattr(handler, "_stderr", None))
        return proc if proc is not None else real(handler, args, env)

    sh.SubprocessHandler._popen = _popen
    return None


def _wait_for_work(fd: int) -> dict:
    """In a copy: its own session (torchrun starts workers with start_new_session), then
    block until handed a worker; exit 0 when the pipe closes first (``os._exit``: a copy
    must never unwind into the launcher's code that forked it)."""
    os.setsid()
    with os.fdopen(fd, "rb") as f:
        line = f.readline()
    if not line.endswith(b"\n"):
        os._exit(0)
    spec = json.loads(line)
    for stream, target in (("stdout", 1), ("stderr", 2)):
        if spec[stream]:
            out = os.open(spec[stream], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(out, target)
            os.close(out)
    os.chdir(spec["cwd"])
    os.environ.clear()
    os.environ.update(spec["env"])
    # What ``python -u`` gives: unbuffered binary layer, text written through.
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        new = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False),
                               encoding=getattr(old, "encoding", None),
                               errors=getattr(old, "errors", None), write_through=True)
        setattr(sys, name, new)
        setattr(sys, f"__{name}__", new)
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()   # a fresh import seeds from the OS
    return spec


def _differs(env: dict[str, str], import_env: dict[str, str]) -> bool:
    def fixed(e: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in e.items()
                if k not in PER_WORKER and not k.startswith(PER_WORKER_PREFIX)}
    return fixed(env) != fixed(import_env)


def _hand_out(copies, script, import_env, args, env, stdout, stderr):
    """A ``Popen`` of a copy now running ``args`` with ``env``, or None (start it cold)."""
    args = [str(a) for a in args]
    if len(args) < 3 or args[:3] != [sys.executable, "-u", script] or _differs(env, import_env):
        return None
    paths = []
    for stream in (stdout, stderr):
        name = getattr(stream, "name", None) if stream is not None else None
        if stream is not None and not isinstance(name, str):
            return None
        paths.append(name)
    line = json.dumps({"argv": args[2:], "env": env, "cwd": os.getcwd(),
                       "stdout": paths[0], "stderr": paths[1]}).encode() + b"\n"
    while copies:
        pid, w = copies.pop(0)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(w, view):]
        except OSError:        # the copy is gone: try the next
            continue
        finally:
            os.close(w)
        return _Adopted(pid, args)
    return None


class _Adopted(subprocess.Popen):
    """A ``Popen`` of a child forked already: what torchrun's agent waits on and signals."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self._adopted_pid = pid
        super().__init__(args)

    def _execute_child(self, *args, **kwargs) -> None:
        self.pid = self._adopted_pid
        self._child_created = True
