"""The modules this process imported by the end of its first step, written once for the
next attempt's standby launcher, which imports them ahead so that the restarted workers
(forked from it) find them loaded: torch imports parts of itself lazily on first use
(``DistributedDataParallel`` pulls in ``torch._dynamo``: about 1 s here), out of reach of
any list of a script's imports. Read by jitc/supervisor/standby_prog.py, which keeps the
file name in step with FILE and decides what is safe to import early.
"""
from __future__ import annotations

import json
import os
import sys

from . import env, private

FILE = "warm-modules.json"


def record(local_rank: int) -> None:
    """Write the module names to the supervisor's run directory (local rank 0 only; no
    supervisor, nothing). Best effort: a restart without the list is only slower."""
    run_dir = env.get(env.RUN_DIR)
    if local_rank != 0 or run_dir is None:
        return
    path = os.path.join(run_dir, FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with private.open_private(tmp) as f:
            json.dump(sorted(name for name in list(sys.modules) if name != "__main__"), f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
