"""Fixtures for the loader-level tests of the CUDA/NCCL interposers.

Every scenario is a small C program plus stub libcudart/libcuda/libnccl libraries, all
built here with gcc into a temporary directory, and run with libjitc.so preloaded, as a
training process would be. No GPU, no real CUDA: the stubs answer as the environment tells
them. A fake supervisor (SOCK_SEQPACKET, decoded with jitc.protocol) collects what the shim
reports.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jitc import protocol
from jitc._lib import lib_path
from jitc.errors import ProtocolError
from jitc.protocol import Msg

HERE = Path(__file__).resolve().parent
STUBS = HERE / "stubs"
SCENARIOS = HERE / "scenarios"
STUB_LIBS = {"cudart": "libcudart.so.13", "cuda": "libcuda.so.1", "nccl": "libnccl.so.2"}
CFLAGS = ["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC"]


def _gcc(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(["gcc", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"gcc {' '.join(args)} failed:\n{proc.stderr}")


@dataclass
class Build:
    """Where the stubs and the scenario programs were built."""
    dir: Path
    programs: dict[str, Path] = field(default_factory=dict)


@pytest.fixture(scope="session")
def build() -> Build:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not available")
    out = Path(tempfile.mkdtemp(prefix="jitc-interpose-"))
    for src, soname in STUB_LIBS.items():
        _gcc([*CFLAGS, "-shared", f"-Wl,-soname,{soname}", "-o", str(out / soname),
              str(STUBS / f"{src}.c")], out)
    # --no-as-needed: a scenario that calls only NCCL still gets the runtime loaded, as
    # with the real libnccl.
    link = [f"-L{out}", "-Wl,--no-as-needed", *(f"-l:{n}" for n in STUB_LIBS.values()), f"-Wl,-rpath,{out}", "-ldl"]
    b = Build(out)
    # Helper libraries some scenarios need, built before the programs that link them.
    _gcc([*CFLAGS, "-shared", "-o", str(out / "libearly.so"),
          str(SCENARIOS / "constructor" / "early.c"), *link], out)
    _gcc([*CFLAGS, "-shared", "-o", str(out / "libframework.so"),
          str(SCENARIOS / "dlopen_local" / "framework.c"), f"-L{out}", "-l:libcudart.so.13",
          f"-Wl,-rpath,{out}"], out)
    for scenario in sorted(p for p in SCENARIOS.iterdir() if p.is_dir()):
        exe = out / scenario.name
        extra = ["-learly"] if scenario.name == "constructor" else []
        if scenario.name == "dlopen_local":
            # The runtime must come only with the dlopened framework, not with the program.
            libs = [f"-Wl,-rpath,{out}", "-ldl"]
        else:
            libs = [*extra, *link]
        _gcc([*CFLAGS, "-o", str(exe), str(scenario / "main.c"), *libs], out)
        b.programs[scenario.name] = exe
    yield b
    shutil.rmtree(out, ignore_errors=True)


class FakeSupervisor:
    """Accepts rank connections and decodes every record they send, on a thread."""

    def __init__(self, path: str):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.settimeout(0.1)
        self.messages: list[protocol.Message] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conns: list[socket.socket] = []
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
                conn.settimeout(0.05)
                conns.append(conn)
            except (socket.timeout, OSError):
                pass
            for conn in list(conns):
                try:
                    record = conn.recv(protocol.MAX_RECORD)
                except socket.timeout:
                    continue
                except OSError:
                    conns.remove(conn)
                    continue
                if not record:
                    conns.remove(conn)
                    continue
                try:
                    msg = protocol.decode(record)
                except ProtocolError:
                    continue
                with self._lock:
                    self.messages.append(msg)
        for conn in conns:
            conn.close()

    def failures(self) -> list[dict]:
        with self._lock:
            return [m.body for m in self.messages if m.type == Msg.FAILURE]

    def wait_failure(self, timeout: float, **match) -> dict | None:
        """The first FAILURE whose fields equal `match`, waiting up to timeout seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.failures():
                if all(body.get(k) == v for k, v in match.items()):
                    return body
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.listener.close()


@pytest.fixture
def supervisor():
    d = tempfile.mkdtemp(prefix="jitc-sup-")
    sup = FakeSupervisor(os.path.join(d, "sock"))
    yield sup
    sup.close()
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def values(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.stdout.splitlines() if "=" in line)


def scenario_env(extra: dict[str, str] | None = None, preload: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JITC_", "STUB_")) and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    if preload:
        env["LD_PRELOAD"] = str(lib_path())
    else:
        env.pop("LD_PRELOAD", None)
    env.update(extra or {})
    return env


def run_scenario(build: Build, name: str, *args: str, env: dict[str, str] | None = None,
                 supervisor: FakeSupervisor | None = None, preload: bool = True,
                 timeout: float = 20) -> Result:
    extra = dict(env or {})
    if supervisor is not None:
        extra["JITC_SOCKET"] = supervisor.path
    proc = subprocess.run([str(build.programs[name]), *args], env=scenario_env(extra, preload),
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)
