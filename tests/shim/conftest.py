"""Fixtures for the shim's core tests: a fake supervisor and a child-rank launcher.

The rank under test is always a separate Python process that loads libjitc.so through the
real binding (jitc._shim), so crashes, signals and exit statuses are real. The fake
supervisor speaks the wire format through jitc.protocol, the Python half of the contract.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jitc import protocol
from jitc._lib import lib_path
from jitc.protocol import Msg

REPO = Path(__file__).resolve().parents[2]

# Imports the binding and names it `lib`; child scripts start with this.
CHILD_PREAMBLE = """
import os, sys, time
from jitc._shim import ffi_lib
ffi, lib = ffi_lib()
"""


# Child-script lines: initialise the shim as rank 0 of 1 (the error text on failure).
INIT = "assert lib.jitc_init(0, 0, 1, 0, 1) == 0, ffi.string(lib.jitc_last_error())\n"


def register(numel: int) -> str:
    """Child-script lines: one float32 tensor ``w`` of ``numel`` elements registered."""
    return f"""
import numpy as np
w = np.arange({numel}, dtype=np.float32)
lib.jitc_registry_begin()
shape = ffi.new("int64_t[1]", [{numel}])
assert lib.jitc_registry_add(b"w", ffi.from_buffer(w), w.nbytes, b"F32", shape, 1, -1) == 0
lib.jitc_registry_commit()
"""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITC_") or k == "JITC_LIB"}
    env["JITC_LIB"] = str(lib_path())
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(k, None)
    # Preloaded, as in a real rank: the _exit hook only interposes when the library comes
    # before libc in the lookup order.
    env["LD_PRELOAD"] = str(lib_path())
    env.update(extra or {})
    return env


def spawn(body: str, extra_env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """Start a rank: a python child running CHILD_PREAMBLE + body."""
    return subprocess.Popen([sys.executable, "-c", CHILD_PREAMBLE + body], env=child_env(extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


class FakeSupervisor:
    """A listening SOCK_SEQPACKET socket that accepts one rank and reads its messages."""

    def __init__(self, path: str):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(8)
        self.conn: socket.socket | None = None
        self.seen: list[protocol.Message] = []

    def accept(self, timeout: float = 10.0) -> None:
        self.listener.settimeout(timeout)
        self.conn, _ = self.listener.accept()

    def recv(self, timeout: float = 10.0) -> protocol.Message | None:
        """Next message, or None on EOF."""
        assert self.conn is not None
        self.conn.settimeout(timeout)
        record = self.conn.recv(protocol.MAX_RECORD + 1)
        if not record:
            return None
        msg = protocol.decode(record)
        self.seen.append(msg)
        return msg

    def expect(self, mtype: Msg, timeout: float = 10.0) -> protocol.Message:
        """Next message of this type, skipping others (PROGRESS mostly)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {mtype.name} within {timeout} s; saw "
                                     f"{[m.type.name for m in self.seen]}")
            msg = self.recv(left)
            if msg is None:
                raise AssertionError(f"EOF before {mtype.name}; saw {[m.type.name for m in self.seen]}")
            if msg.type == mtype:
                return msg

    def send(self, mtype: Msg, body: dict) -> None:
        assert self.conn is not None
        self.conn.send(protocol.encode(mtype, body))

    def send_raw(self, record: bytes) -> None:
        assert self.conn is not None
        self.conn.send(record)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def sockdir():
    # AF_UNIX paths are limited to 108 bytes: keep them short, not under pytest's tmp_path.
    d = tempfile.mkdtemp(prefix="jitc-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def supervisor(sockdir):
    sup = FakeSupervisor(os.path.join(sockdir, "sup.sock"))
    yield sup
    sup.close()


@pytest.fixture
def libjitc() -> Path:
    return lib_path()
