"""A warm launcher for the next attempt: the job's command started ahead of time, its
imports done, waiting for the word to run.

Why: jitc restarts the whole command, and torchrun's launcher spends about 2 s importing
torch before it starts a single worker: on the critical path of every recovery, and a
cost torchrun's own ``--max-restarts`` does not pay (it keeps its launcher and restarts
only the workers). A standby imports during training, in a low-priority thread, and at
the restart receives the attempt's environment and argv and runs the command's entry point
at once (``standby_prog.py``).

Only Python entry points can be pre-warmed: an executable script whose shebang names a
Python interpreter (``torchrun`` and other console scripts), ``python -m MODULE ...`` and
``python SCRIPT ...``. Anything else starts cold, as before. The standby imports the
script's top-level imports (for ``-m``, the module's parent packages), never the job's
own modules nor jitc, which could read the attempt's environment at import time.

For torchrun the standby also forks torchrun's workers from itself at the restart, warm
(``standby_workers.py``; docs/internals.md, "Warm workers").

The standby is a child of the supervisor in its own session, like the job, with the same
death signal; ``Job.stop`` must be told to spare it.
"""
from __future__ import annotations

import json
import os
import re
import fcntl
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import env as jenv

PROG = Path(__file__).resolve().parent / "standby_prog.py"
# Set per attempt at the go, not at the standby's start.
PER_ATTEMPT = (jenv.ATTEMPT, jenv.RESUME)
_MAX_SCRIPT_BYTES = 1 << 20
_IMPORT = re.compile(r"^(?:from\s+([\w.]+)\s+import\b|import\s+([\w.]+(?:\s*,\s*[\w.]+)*))", re.M)
_PYTHON = re.compile(r"^python[\d.]*$")
_PIPE_BYTES = 65536      # Linux's default pipe capacity: the go line must fit in one write


@dataclass(frozen=True)
class Plan:
    interpreter: tuple[str, ...]   # the interpreter and its own flags
    mode: str                      # "script" | "module"
    target: str                    # script path or module name
    argv: tuple[str, ...]          # sys.argv for the real run
    warm: tuple[str, ...]          # modules to import ahead
    workers: str = "-"             # "torchrun": fork its workers warm (standby_workers.py)


def plan(command: tuple[str, ...], environ: dict[str, str]) -> Plan | None:
    """How to pre-warm ``command``, or None when it is not a Python entry point we can run
    in a waiting interpreter exactly as its own exec would."""
    exe = shutil.which(command[0], path=environ.get("PATH")) if command else None
    if exe is None:
        return None
    if _PYTHON.match(os.path.basename(exe)):
        return _python_command(exe, command)
    shebang = _shebang(exe)
    if shebang is None:
        return None
    interp = _interpreter(shebang, environ)
    if interp is None:
        return None
    # sys.argv[0] as the kernel's exec of the script would give it: the path it found.
    warm = _script_imports(exe)
    workers = "torchrun" if "torch.distributed.run" in warm else "-"
    return Plan(interp, "script", exe, (exe, *command[1:]), warm, workers)


def _python_command(exe: str, command: tuple[str, ...]) -> Plan | None:
    """``python -m MOD ARGS`` or ``python SCRIPT ARGS``; interpreter flags are not
    reproduced, so a command that uses any starts cold."""
    rest = command[1:]
    if len(rest) >= 2 and rest[0] == "-m":
        mod = rest[1]
        parents = tuple(".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1))
        return Plan((exe,), "module", mod, (mod, *rest[2:]), parents)
    if rest and not rest[0].startswith("-") and os.path.isfile(rest[0]):
        return Plan((exe,), "script", rest[0], tuple(rest), _script_imports(rest[0]))
    return None


def _shebang(path: str) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    return first[2:].decode(errors="replace").split()


def _interpreter(shebang: list[str], environ: dict[str, str]) -> tuple[str, ...] | None:
    if not shebang:
        return None
    words = shebang
    if os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
        if not words:
            return None
        found = shutil.which(words[0], path=environ.get("PATH"))
        if found is None:
            return None
        words = [found, *words[1:]]
    if not _PYTHON.match(os.path.basename(words[0])) or len(words) > 1:
        return None          # interpreter flags in the shebang: start cold
    return (words[0],)


def _script_imports(path: str) -> tuple[str, ...]:
    try:
        if os.path.getsize(path) > _MAX_SCRIPT_BYTES:
            return ()
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ()
    names: list[str] = []
    for m in _IMPORT.finditer(text):
        for name in (m.group(1),) if m.group(1) else m.group(2).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return tuple(names)


class Standby:
    """One waiting interpreter. ``go`` turns it into the attempt's job process."""

    def __init__(self, p: Plan, environ: dict[str, str], preexec_fn) -> None:
        self.plan = p
        self.environ = {k: v for k, v in environ.items() if k not in PER_ATTEMPT}
        read_fd, self._write_fd = os.pipe()
        try:
            self.popen = subprocess.Popen(
                [*p.interpreter, str(PROG), str(read_fd), p.mode, p.target, p.workers, *p.warm],
                env=self.environ, start_new_session=True, preexec_fn=preexec_fn,
                pass_fds=(read_fd,))
        except BaseException:
            os.close(self._write_fd)
            raise
        finally:
            os.close(read_fd)
        self.pid = self.popen.pid

    def go(self, environ: dict[str, str]) -> subprocess.Popen | None:
        """Run the command with ``environ``. None (and the standby discarded) when it is no
        longer waiting or the environment differs from its start in anything but the
        per-attempt variables: the caller then starts the command cold."""
        same = {k: v for k, v in environ.items() if k not in PER_ATTEMPT} == self.environ
        if not same or self.popen.poll() is not None:
            self.discard()
            return None
        line = json.dumps({"argv": list(self.plan.argv), "env": environ}).encode() + b"\n"
        try:
            # Non-blocking: a standby that stopped reading must not stall the supervisor.
            fcntl.fcntl(self._write_fd, fcntl.F_SETFL, os.O_NONBLOCK)
            ok = len(line) <= _PIPE_BYTES and os.write(self._write_fd, line) == len(line)
        except OSError:
            ok = False
        self._close()
        if not ok:
            self.discard()
            return None
        return self.popen

    def discard(self) -> None:
        """Close the pipe (the standby exits on EOF) and make sure it is gone."""
        self._close()
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _close(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
