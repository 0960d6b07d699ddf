"""What a rank does with an exception that ends its training loop.

A collective that fails because *another* rank died or hung means this rank is healthy and
holds a good replica: it reports itself as a ``peer`` failure (secondary, never a root
cause; its state trusted — jitc/failure_kinds.def), then lingers so the supervisor can have
its native agent write the just-in-time snapshot, and exits once released. Any other
exception is this rank's own failure (``exception``: suspect state).

What counts as "a collective failed because of a peer", in order:

1. An injected fault is this rank's own (it stands for a bug in the training code).
2. torch's own types for a failed backend or transport (``DistBackendError``,
   ``DistNetworkError``; torch raises them for NCCL errors and store/socket failures).
3. A ``RuntimeError`` whose text comes from a collective transport that lost its peer:
   gloo's transport, which names its source file (``gloo/transport/tcp/pair.cc:553]
   Connection closed by peer``, read errors, timeouts waiting for a peer), or NCCL's results
   for a remote or system failure and an aborted communicator. A message that merely names
   a process group (``ProcessGroupGloo does not support ...``: a usage bug) or a socket
   phrase raised by the user's own code is *not* evidence of a peer failure.
"""
from __future__ import annotations

import sys
import traceback

import torch.distributed as dist

from . import failures
from .errors import InjectedFault

# Substrings only a collective transport that lost its peer puts into a RuntimeError.
_PEER_MARKERS = ("gloo/transport/", "ncclRemoteError", "ncclSystemError",
                 "NCCL communicator was aborted")
_BACKEND_ERRORS = tuple(getattr(dist, n) for n in ("DistBackendError", "DistNetworkError")
                        if hasattr(dist, n))
LINGER_S = 120.0   # bounded: the supervisor releases us long before in practice


def classify(exc: BaseException) -> str:
    """``peer`` when a collective failed because another rank did, else ``exception``."""
    if isinstance(exc, InjectedFault):
        return failures.EXCEPTION
    if _BACKEND_ERRORS and isinstance(exc, _BACKEND_ERRORS):
        return failures.PEER
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _PEER_MARKERS):
        return failures.PEER
    return failures.EXCEPTION


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
