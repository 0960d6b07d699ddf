"""A stand-in for torchrun: start N ranks with RANK/LOCAL_RANK/WORLD_SIZE, and when one
fails, SIGTERM the others (waiting a bounded time, then SIGKILL) and exit non-zero.
FAKE_LAUNCHER_TERM_DELAY=S: a slow launcher, which begins to stop only S seconds after it
was asked to (SIGTERM) or saw a rank fail; it never exits on its own within S seconds.

  fake_launcher.py --nproc N SCRIPT [ARGS...]
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.05
TERM_WAIT_S = 20.0


def main():
    args = sys.argv[1:]
    if args[0] != "--nproc":
        sys.exit("usage: fake_launcher.py --nproc N SCRIPT [ARGS...]")
    n, cmd = int(args[1]), args[2:]
    procs = []
    for r in range(n):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n))
        procs.append(subprocess.Popen([sys.executable, *cmd], env=env))

    def stop(signum=None, frame=None):
        time.sleep(float(os.environ.get("FAKE_LAUNCHER_TERM_DELAY", "0")))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERM_WAIT_S
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if signum is not None:
            sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    while True:
        codes = [p.poll() for p in procs]
        if any(c not in (None, 0) for c in codes):
            stop()
            sys.exit(1)
        if all(c == 0 for c in codes):
            sys.exit(0)
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
