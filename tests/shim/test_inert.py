"""Invariant I4: a process that never calls jitc_init is not changed by the preloaded shim.

No output, no thread, no signal handler, no connection — in a plain `python -c`, with
JITC_SOCKET pointing at a live socket, and in torchrun's agent (which has no RANK)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from .conftest import REPO, child_env

PROBE = textwrap.dedent("""
    import os
    def sigcgt():
        for line in open('/proc/self/status'):
            if line.startswith('SigCgt:'):
                return line.split()[1]
    print(len(os.listdir('/proc/self/task')), sigcgt())
""")


def _run(code: str, preload: bool, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = child_env(extra)
    if not preload:
        env.pop("LD_PRELOAD", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


def test_print_one_unchanged() -> None:
    run = _run("print(1)", preload=True, extra={"JITC_DEBUG": "1"})
    assert run.stdout == "1\n"
    assert run.stderr == ""
    assert run.returncode == 0


def test_no_thread_no_signal_handler() -> None:
    plain = _run(PROBE, preload=False)
    preloaded = _run(PROBE, preload=True, extra={"JITC_DIR": "/tmp", "RANK": "0"})
    assert plain.returncode == 0 and preloaded.returncode == 0
    assert preloaded.stdout == plain.stdout        # same thread count, same caught signals
    assert preloaded.stderr == ""


def test_socket_set_but_no_init_connects_nothing(sockdir) -> None:
    path = os.path.join(sockdir, "sup.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(4)
    try:
        run = _run("import time; time.sleep(0.3); print('done')", preload=True,
                   extra={"JITC_SOCKET": path, "RANK": "0", "WORLD_SIZE": "1"})
        assert run.stdout == "done\n" and run.stderr == ""
        listener.settimeout(0.5)
        try:
            listener.accept()
            connected = True
        except socket.timeout:
            connected = False
        assert not connected
    finally:
        listener.close()


def test_torchrun_agent_unaffected(tmp_path: Path, sockdir) -> None:
    script = tmp_path / "hello.py"
    script.write_text("import os\nprint('rank', os.environ['RANK'], 'ok', flush=True)\n")
    path = os.path.join(sockdir, "sup.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(4)
    env = child_env({"JITC_SOCKET": path})
    try:
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
                              "--master-port", "0", str(script)], env=env, capture_output=True,
                             text=True, timeout=120, cwd=str(tmp_path))
        assert run.returncode == 0, run.stderr
        assert "rank 0 ok" in run.stdout
        assert "[jitc" not in run.stderr
        listener.settimeout(0.2)
        try:
            listener.accept()
            connected = True
        except socket.timeout:
            connected = False
        assert not connected                        # neither the agent nor the worker
    finally:
        listener.close()
