"""Armed interposer faults (jitc_fault_arm) fire at the next interposed call and are
reported like real failures."""
from __future__ import annotations

from .conftest import run_scenario


def test_cuda_error_fault_fails_the_call_and_sticks(build, supervisor):
    r = run_scenario(build, "faults", "cuda-error", supervisor=supervisor)
    assert r.returncode == 0, r.stderr
    v = r.values
    assert v["before"] == "0"
    assert v["launch"] == "700"
    assert v["last_error"] == "700"     # sticky, as after a real illegal address
    assert v["sync"] == "700"
    assert v["reached_stub"] == "0"     # the faulted calls never reached the library
    failure = supervisor.wait_failure(5, kind="cuda-error")
    assert failure is not None and failure["error"] == "cudaErrorIllegalAddress"
    assert "cudaLaunchKernel" in failure["detail"] and "injected" in failure["detail"]


def test_nccl_error_fault_fails_the_collective_and_the_comm(build, supervisor):
    r = run_scenario(build, "faults", "nccl-error", supervisor=supervisor)
    assert r.returncode == 0, r.stderr
    v = r.values
    assert v["allreduce"] == "1"        # ncclUnhandledCudaError
    assert v["async"] == "1"            # ncclCommGetAsyncError says so too
    assert v["second"] == "0"           # one-shot: the next collective passes
    failure = supervisor.wait_failure(5, kind="nccl-error")
    assert failure is not None and failure["error"] == "ncclUnhandledCudaError"


def test_nccl_hang_fault_is_detected_by_the_watchdog(build, supervisor):
    r = run_scenario(build, "faults", "nccl-hang", "1.5", supervisor=supervisor,
                     env={"JITC_HANG_TIMEOUT": "0.4"})
    assert r.returncode == 0, r.stderr
    assert r.values["allreduce"] == "0"  # issued normally
    failure = supervisor.wait_failure(5, kind="nccl-hang")
    assert failure is not None and failure["error"] == "ncclAllReduce"
    assert "injected" in failure["detail"]
