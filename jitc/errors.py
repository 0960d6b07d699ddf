"""The one error taxonomy of jitc.

``JitcError`` is the base of everything jitc raises on purpose. ``StopNow`` derives from
``BaseException`` so that a broad ``except Exception`` in user code cannot swallow it: it
means "recovery owns this process now, unwind".
"""
from __future__ import annotations


class JitcError(Exception):
    """Base of jitc's errors."""


class UsageError(JitcError):
    """Bad input from the user: a flag, a fault spec, an argument. One line, exit code 2."""


class ShimError(JitcError):
    """The native library returned an error code, or is not loaded."""


class SnapshotError(JitcError):
    """A snapshot could not be written."""


class CorruptSnapshotError(SnapshotError):
    """A snapshot on disk is partial, corrupt or from another model: never loaded."""


class NoSnapshotError(SnapshotError):
    """No complete snapshot exists where one was needed."""


class RecoveryError(JitcError):
    """Recovery is impossible (e.g. every replica of some state is gone)."""


class ProtocolError(JitcError):
    """A malformed message on the supervisor channel."""


class InjectedFault(RuntimeError):
    """Raised by the ``exception`` fault kind. A RuntimeError, like a real training bug."""


class StopNow(BaseException):
    """Unwind the training loop now; recovery owns the process. Not an Exception on purpose."""
