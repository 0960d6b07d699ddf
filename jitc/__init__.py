"""jitc: keep distributed PyTorch training alive through failures, without periodic
checkpoints. See README.md; ``protect()`` is the entry point for training scripts.

torch is imported lazily, so ``jitc supervise`` and ``jitc lib`` start fast.
"""
from .errors import JitcError

__all__ = ["JitcError", "Session", "init_process_group", "protect"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("Session", "protect"):
        from . import session
        return getattr(session, name)
    if name == "init_process_group":
        from .dist import init_process_group
        return init_process_group
    raise AttributeError(f"module 'jitc' has no attribute {name!r}")
