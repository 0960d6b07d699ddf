"""The native watchdog: deadline logic with an injected clock (native unit test), and a
real hang detected in a child rank (supervised: FAILURE kind=hang; shim-only: the local
snapshot is written and the rank exits with code 75)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jitc.protocol import Msg

from .conftest import INIT, REPO, register, spawn

LOCAL_RECOVERY_EXIT = 75  # csrc/config.h limits::kLocalRecoveryExitCode


def test_deadline_logic_native(tmp_path: Path) -> None:
    exe = tmp_path / "test_watchdog"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1",
                    f"-I{REPO / 'csrc'}", str(Path(__file__).parent / "native" / "test_watchdog.cpp"),
                    str(REPO / "csrc" / "watchdog.cpp"), "-o", str(exe), "-pthread"],
                   check=True, timeout=120)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "OK"


def test_hang_reported_between_timeout_and_twice_it(supervisor) -> None:
    child = spawn("""
assert lib.jitc_init(0, 0, 1, 0, 1) == 0
lib.jitc_step_begin(3)
print(time.monotonic(), flush=True)
time.sleep(3)
lib.jitc_shutdown(1)
""", {"JITC_SOCKET": supervisor.path, "JITC_HANG_TIMEOUT": "1"})
    try:
        supervisor.accept()
        began = float(child.stdout.readline())
        fail = supervisor.expect(Msg.FAILURE, timeout=5)
        arrived = time.monotonic()
        assert 1.0 <= arrived - began <= 2.0, arrived - began
        body = fail.body
        assert body["kind"] == "hang"
        assert body["step"] == 3
        assert body["timeout"] == pytest.approx(1.0)
        assert 1.0 < body["elapsed"] < 2.0
        assert body["phase"] == "forward"
        assert body["progress"] == [3, 1, 0]
        supervisor.expect(Msg.GOODBYE)
        # Reported once per step: nothing else but PROGRESS between.
        assert [m.type for m in supervisor.seen].count(Msg.FAILURE) == 1
    finally:
        child.wait(timeout=10)
    assert child.returncode == 0, child.stderr.read()


def test_region_deadline_reported_with_name(supervisor) -> None:
    child = spawn("""
assert lib.jitc_init(0, 0, 1, 0, 1) == 0
lib.jitc_step_begin(1)
rid = lib.jitc_region_begin(3, b"my-barrier", 0.3)
assert rid > 0
time.sleep(1.0)
assert lib.jitc_region_end(rid) == 0
lib.jitc_shutdown(1)
""", {"JITC_SOCKET": supervisor.path, "JITC_HANG_TIMEOUT": "60"})
    try:
        supervisor.accept()
        fail = supervisor.expect(Msg.FAILURE, timeout=5).body
        assert fail["kind"] == "hang"
        assert fail["region"] == "my-barrier"
        assert fail["timeout"] == pytest.approx(0.3)
        supervisor.expect(Msg.GOODBYE)
    finally:
        child.wait(timeout=10)
    assert child.returncode == 0, child.stderr.read()


def test_shim_only_hang_writes_local_snapshot_and_exits_75(tmp_path: Path) -> None:
    child = spawn(INIT + register(1000) + """
lib.jitc_step_begin(2)
time.sleep(20)
print("not reached")
""", {"JITC_DIR": str(tmp_path), "JITC_HANG_TIMEOUT": "0.5", "JITC_ATTEMPT": "1"})
    out, err = child.communicate(timeout=20)
    assert child.returncode == LOCAL_RECOVERY_EXIT, err
    assert "not reached" not in out
    stripe = tmp_path / "snap-a1-s2-0" / "stripe-0-of-1.safetensors"
    assert stripe.is_file(), list(tmp_path.rglob("*"))
    tensors = load_file(str(stripe))
    np.testing.assert_array_equal(tensors["w"], np.arange(1000, dtype=np.float32))
