"""Snapshots on disk: the format the shim writes, and publishing, verifying, loading and
inspecting it from Python. The writer itself is native (csrc/snapshot/), so a rank can
snapshot without the GIL; everything here runs in the supervisor, in `jitc inspect`, or in
`protect()` when resuming.
"""
from .inspect import inspect_main
from .loader import LoadedSnapshot, check_compatible, latest_complete, load, load_latest
from .manifest import publish
from .verify import verify_manifest

__all__ = ["publish", "latest_complete", "load", "load_latest", "inspect_main",
           "LoadedSnapshot", "check_compatible", "verify_manifest"]
