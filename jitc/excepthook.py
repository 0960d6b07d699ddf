"""What a rank does with an exception that ends its training loop.

A collective that fails because *another* rank died (gloo "Connection reset by peer", an
NCCL error) means this rank is healthy and holds a good replica: it reports itself as a
``peer`` failure (never a root cause), then lingers so the supervisor can have its native
agent write the just-in-time snapshot, and exits once released. Any other exception is
this rank's own failure (``exception``).
"""
from __future__ import annotations

import sys
import traceback

import torch.distributed as dist

from .errors import InjectedFault

# Substrings of the messages torch raises when a peer of a collective is gone.
_PEER_MARKERS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer",
                 "NCCL communicator was aborted", "ncclRemoteError", "ncclSystemError",
                 "Broken pipe", "ProcessGroupNCCL", "ProcessGroupGloo")
LINGER_S = 120.0   # bounded: the supervisor releases us long before in practice


def classify(exc: BaseException) -> str:
    """'peer' when a collective failed because another rank did, else 'exception'."""
    if isinstance(exc, InjectedFault):
        return "exception"
    backend_errors = tuple(getattr(dist, n) for n in ("DistBackendError", "DistNetworkError")
                           if hasattr(dist, n))
    if backend_errors and isinstance(exc, backend_errors):
        return "peer"
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(m in text for m in _PEER_MARKERS):
        return "peer"
    return "exception"


def describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:400]


def install(on_failure) -> None:
    """Chain a hook that calls ``on_failure(kind, exc)`` before Python's own handling."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if isinstance(exc, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        # Print first: the user sees the traceback while the rank lingers for recovery.
        # After this hook returns the interpreter exits with status 1, as it would have.
        traceback.print_exception(exc_type, exc, tb)
        sys.stderr.flush()
        on_failure(classify(exc), exc)

    sys.excepthook = hook
