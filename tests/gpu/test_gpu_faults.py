"""GPU self-test of the CUDA/NCCL interposers: real torch CUDA training under the preloaded
shim, each interposer fault kind injected, and the report checked (kind and error name).

One command on a GPU machine: `python tests/gpu/test_gpu_faults.py` (prints a summary) or
`pytest tests/gpu -q`. Skipped cleanly where torch has no CUDA device.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from jitc import protocol  # noqa: E402
from jitc._lib import lib_path  # noqa: E402
from jitc.protocol import Msg  # noqa: E402

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

EXPECTED = {
    "cuda-error": ("cuda-error", "cudaErrorIllegalAddress"),
    "nccl-error": ("nccl-error", "ncclUnhandledCudaError"),
    "nccl-hang": ("nccl-hang", None),   # error = the collective's name
}


def run_drill(kind: str, timeout: float = 120) -> tuple[list[dict], str]:
    """Run examples/gpu_fault_drill.py as a rank; return (FAILURE bodies, its stdout)."""
    d = tempfile.mkdtemp(prefix="jitc-gpu-")
    path = os.path.join(d, "sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(2)
    listener.settimeout(timeout)
    failures: list[dict] = []

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            while True:
                try:
                    record = conn.recv(protocol.MAX_RECORD)
                except OSError:
                    return
                if not record:
                    return
                msg = protocol.decode(record)
                if msg.type == Msg.FAILURE:
                    failures.append(msg.body)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    env = dict(os.environ, LD_PRELOAD=str(lib_path()), JITC_SOCKET=path,
               JITC_HANG_TIMEOUT="1.0", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "gpu_fault_drill.py"), kind],
                          env=env, capture_output=True, text=True, timeout=timeout)
    t.join(timeout=5)
    listener.close()
    return failures, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_gpu_fault_is_reported(kind):
    failures, output = run_drill(kind)
    want_kind, want_error = EXPECTED[kind]
    match = [f for f in failures if f.get("kind") == want_kind]
    assert match, f"no {want_kind} report; failures={failures}\n{output}"
    if want_error is not None:
        assert match[0]["error"] == want_error
    else:
        assert match[0]["error"].startswith("nccl")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("gpu self-test: skipped (no CUDA device)")
        sys.exit(0)
    ok = True
    for kind in sorted(EXPECTED):
        t0 = time.monotonic()
        failures, output = run_drill(kind)
        want_kind, want_error = EXPECTED[kind]
        match = [f for f in failures if f.get("kind") == want_kind]
        good = bool(match) and (want_error is None or match[0]["error"] == want_error)
        ok &= good
        got = match[0] if match else failures
        print(f"{kind:<11} {'PASS' if good else 'FAIL'} ({time.monotonic() - t0:.1f} s) reported: {got}")
        if not good:
            print(output)
    sys.exit(0 if ok else 1)
