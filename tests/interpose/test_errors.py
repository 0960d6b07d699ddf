"""A failing CUDA or NCCL call is reported with the right kind, error name and code, a
benign answer is not, and the caller still gets the real library's result."""
from __future__ import annotations

import pytest

from .conftest import run_scenario


@pytest.mark.parametrize("mode, env, kind, error, code", [
    ("sync", {"STUB_CUDA_SYNC_ERROR": "700"}, "cuda-error", "cudaErrorIllegalAddress", 700),
    ("sync", {"STUB_CUDA_SYNC_ERROR": "214"}, "cuda-error", "cudaErrorECCUncorrectable", 214),
    ("sync", {"STUB_CUDA_SYNC_ERROR": "2"}, "cuda-error", "cudaErrorMemoryAllocation", 2),
    ("driver", {"STUB_CU_SYNC_ERROR": "719"}, "cuda-error", "CUDA_ERROR_LAUNCH_FAILED", 719),
    ("nccl", {"STUB_NCCL_RESULT": "2"}, "nccl-error", "ncclSystemError", 2),
    ("async", {"STUB_NCCL_ASYNC_ERROR": "6"}, "nccl-error", "ncclRemoteError", 6),
])
def test_error_is_reported_with_its_name(build, supervisor, mode, env, kind, error, code):
    r = run_scenario(build, "errors", mode, env=env, supervisor=supervisor)
    assert r.returncode == 0, r.stderr
    # The program sees exactly what the real library returned.
    if mode == "async":
        assert r.values["async"] == str(code)
    else:
        assert r.values["rc"] == str(code)
    failure = supervisor.wait_failure(5, kind=kind)
    assert failure is not None, f"no {kind} report; got {supervisor.failures()}"
    assert failure["error"] == error
    assert failure["code"] == code
    assert failure["rank"] == 0
    severity = "recoverable" if code == 2 and kind == "cuda-error" else "fatal"
    assert severity in failure["detail"]


@pytest.mark.parametrize("mode, env, rc", [
    ("query", {"STUB_NCCL_NEVER_COMPLETE": "1"}, 600),    # cudaErrorNotReady from a query
    ("sync", {"STUB_CUDA_SYNC_ERROR": "4"}, 4),          # cudaErrorCudartUnloading at exit
    ("sync", {}, 0),
])
def test_benign_results_are_not_reported(build, supervisor, mode, env, rc):
    r = run_scenario(build, "errors", mode, env=env, supervisor=supervisor)
    assert r.returncode == 0, r.stderr
    assert r.values["rc"] == str(rc)
    # The program has exited after shutdown: every report it made has arrived.
    assert supervisor.wait_failure(0.3) is None, supervisor.failures()


def test_runtime_loaded_only_by_a_local_dlopen_is_found_and_observed(build, supervisor):
    r = run_scenario(build, "dlopen_local", str(build.dir), env={"STUB_CUDA_SYNC_ERROR": "719"},
                     supervisor=supervisor)
    assert r.returncode == 0, r.stderr
    assert r.values["rc"] == "719"
    failure = supervisor.wait_failure(5, kind="cuda-error")
    assert failure is not None and failure["error"] == "cudaErrorLaunchFailure"
