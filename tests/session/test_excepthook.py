"""A collective that failed because a peer died is a secondary failure, never a root cause."""
import torch.distributed as dist

from jitc.errors import InjectedFault
from jitc.excepthook import classify


def test_gloo_peer_reset_is_peer():
    msg = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:22937: "
           "Connection reset by peer")
    assert classify(RuntimeError(msg)) == "peer"


def test_backend_error_is_peer():
    assert classify(dist.DistBackendError("NCCL error: remote process exited")) == "peer"


def test_user_errors_are_own_failures():
    assert classify(ValueError("bad shape")) == "exception"
    assert classify(RuntimeError("CUDA out of memory")) == "exception"
    assert classify(InjectedFault("injected")) == "exception"
