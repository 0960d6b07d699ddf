"""Loader-level behaviour: driver functions fetched by pointer, calls from another
library's constructor, and the inert shim."""
from __future__ import annotations

from .conftest import run_scenario


def test_driver_function_from_cuGetProcAddress_is_wrapped(build, supervisor):
    r = run_scenario(build, "proc_address", env={"STUB_CU_SYNC_ERROR": "700"},
                     supervisor=supervisor)
    assert r.returncode == 0, r.stderr
    v = r.values
    assert v["v2_rc"] == "0" and v["legacy_rc"] == "0"
    # Both spellings hand back a function inside the shim, which calls the driver's own.
    assert v["v2_owner"] == "libjitc.so"
    assert v["legacy_owner"] == "libjitc.so"
    assert v["v2_call"] == "700" and v["legacy_call"] == "700"
    assert v["stub_calls"] == "2"
    # Per-thread-stream variants are different functions: left alone.
    assert v["ptds_owner"] == "libcuda.so.1"
    # cuGetProcAddress fetched through itself is ours too.
    assert v["gpa_owner"] == "libjitc.so"
    failure = supervisor.wait_failure(5, kind="cuda-error")
    assert failure is not None and failure["error"] == "CUDA_ERROR_ILLEGAL_ADDRESS"
    assert "cuCtxSynchronize" in failure["detail"]


def test_calls_from_a_constructor_before_the_shim_is_used(build):
    r = run_scenario(build, "constructor", env={"STUB_CUDA_SYNC_ERROR": "3"})
    assert r.returncode == 0, r.stderr
    v = r.values
    # The stubs' answers, unchanged: every call reached the real library.
    assert v["early"] == "3,3,0,0,0"
    assert v["cudart_calls"] == "2" and v["cuda_calls"] == "1" and v["nccl_calls"] == "2"


def run_inert(build, preload):
    return run_scenario(build, "inert", preload=preload,
                        env={"STUB_CUDA_SYNC_ERROR": "700", "STUB_CUDA_LAUNCH_ERROR": "719",
                             "STUB_NCCL_NEVER_COMPLETE": "1", "STUB_CU_SYNC_ERROR": "214",
                             "STUB_NCCL_RESULT": "2", "STUB_NCCL_ASYNC_ERROR": "6"})


def test_inert_shim_adds_nothing(build):
    with_shim, without = run_inert(build, True), run_inert(build, False)
    assert with_shim.returncode == 0 and without.returncode == 0, with_shim.stderr
    # Same answers, same calls into the library, no event recorded, no thread started,
    # nothing printed by the shim.
    assert with_shim.values == without.values
    assert with_shim.values["recorded"] == "0"
    assert with_shim.values["threads"] == "1"
    assert with_shim.stderr == without.stderr == ""
