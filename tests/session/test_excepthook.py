"""A collective that failed because a peer died is a secondary failure, never a root cause;
anything else a rank raises is its own failure. The classification needs evidence from the
transport or torch's error types, not a process group's name."""
import pytest
import torch.distributed as dist

from jitc import failures
from jitc.errors import InjectedFault
from jitc.excepthook import classify

# As torch 2.x's gloo raises them (seen with a peer killed during all_reduce).
GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
               "Connection closed by peer [127.0.0.1]:7566. This is typically caused by a "
               "remote worker crashing.")
GLOO_RESET = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[127.0.0.1]:22937: Connection reset by peer")
GLOO_TIMEOUT = ("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out "
                "waiting 30000ms for recv operation to complete")
NCCL_REMOTE = ("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was "
               "a network error, NCCL version 2.21.5\nncclRemoteError: A call failed")


@pytest.mark.parametrize("msg", [GLOO_CLOSED, GLOO_RESET, GLOO_TIMEOUT, NCCL_REMOTE,
                                 "NCCL communicator was aborted on rank 0."])
def test_transport_failures_are_peer(msg):
    assert classify(RuntimeError(msg)) == "peer"


@pytest.mark.parametrize("error", ["DistBackendError", "DistNetworkError"])
def test_backend_error_types_are_peer(error):
    assert classify(getattr(dist, error)("NCCL error: remote process exited")) == "peer"


@pytest.mark.parametrize("exc", [
    ValueError("bad shape"),
    RuntimeError("CUDA out of memory"),
    InjectedFault("injected"),
    InjectedFault(GLOO_RESET),                                  # injected: always own
    # Naming a process group is a usage bug of this rank, not a peer's failure.
    RuntimeError("ProcessGroupGloo does not support reduce_scatter"),
    RuntimeError("ProcessGroupNCCL is only supported with GPUs, no GPUs found!"),
    # Socket phrases from the user's own code (a data loader, an HTTP client).
    RuntimeError("DataLoader worker: Broken pipe"),
    RuntimeError("fetching shard: Connection reset by peer"),
    ValueError(GLOO_CLOSED),                                    # not raised by a collective
])
def test_own_errors_are_exception(exc):
    assert classify(exc) == "exception"


def test_both_answers_are_table_kinds_with_the_right_trust():
    assert failures.kind(classify(RuntimeError(GLOO_CLOSED))).trusted
    assert failures.kind(classify(RuntimeError(GLOO_CLOSED))).secondary
    assert not failures.kind(classify(ValueError("x"))).trusted
