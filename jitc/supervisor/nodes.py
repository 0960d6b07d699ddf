"""What a command's launcher says, as torchrun itself reads it (cluster/topology.py asks).

The authority on what a torchrun command means is torchrun's own parser (it reads
``PET_*`` variables as defaults and accepts abbreviated options). Importing it costs the
supervisor a torch import (~2 s here), so a command is first scanned for options that
cannot change the node count; anything the scan does not know goes to torchrun's parser.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil

from .standby import plan

_TORCHRUN_MODULES = ("torch.distributed.run", "torch.distributed.launch")
# torchrun options that cannot admit another node (``--standalone`` forces one node).
# Spelled with dashes; torchrun accepts the underscore forms too.
_SAFE_WITH_VALUE = frozenset({
    "--nproc-per-node", "--master-addr", "--master-port", "--node-rank", "--monitor-interval",
    "--max-restarts", "--start-method", "--role", "--log-dir", "--redirects", "--tee",
    "--local-ranks-filter", "--local-addr", "-r", "-t"})
_SAFE_FLAGS = frozenset({"--standalone", "--no-python", "--module", "-m", "--run-path"})


def parse_torchrun(command: tuple[str, ...], environ: dict[str, str]):
    """torchrun's own reading of ``command`` (its argparse namespace) when the command runs
    torchrun with options that may span nodes; None when it does not run torchrun, surely
    runs on one node (decided without importing torch), or torchrun would reject it."""
    launcher = _torchrun_args(command, environ)
    if launcher is None or _surely_one_node(launcher, environ):
        return None
    return _parse(launcher, environ)


def _torchrun_args(command: tuple[str, ...], environ: dict[str, str]) -> list[str] | None:
    """torchrun's own arguments when ``command`` runs torchrun, else None."""
    if not command:
        return None
    p = plan(command, environ)
    if p is not None:
        if p.workers == "torchrun":
            return list(p.argv[1:])
        if p.mode == "module" and p.target in _TORCHRUN_MODULES:
            return list(p.argv[1:])
        return None
    exe = shutil.which(command[0], path=environ.get("PATH")) or command[0]
    return list(command[1:]) if os.path.basename(exe) == "torchrun" else None


def _surely_one_node(argv: list[str], environ: dict[str, str]) -> bool:
    """True when every option before the training script is one that cannot make the job
    span nodes and no ``PET_*`` default is set; False means "ask torchrun's parser"."""
    if any(k.startswith("PET_") for k in environ):
        return False
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-"):
            return True                       # the training script: the rest is its own
        name, has_value = word.split("=", 1)[0].replace("_", "-"), "=" in word
        if name in _SAFE_FLAGS and not has_value:
            i += 1
        elif name in _SAFE_WITH_VALUE:
            i += 1 if has_value else 2
        else:
            return False
    return True


def _parse(argv: list[str], environ: dict[str, str]):
    try:
        from torch.distributed import run as trun
    except ImportError:
        return None
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(environ)         # PET_* defaults as the job would see them
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return trun.get_args_parser().parse_args(argv)
    except SystemExit:
        return None
    finally:
        os.environ.clear()
        os.environ.update(saved)
