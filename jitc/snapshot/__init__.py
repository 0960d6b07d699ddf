"""Snapshots on disk: the format the shim writes, and publishing, verifying, loading and
inspecting it from Python. The writer itself is native (csrc/snapshot/), so a rank can
snapshot without the GIL; everything here runs in the supervisor, in `jitc inspect`, or in
`protect()` when resuming.

The names below are imported on first use (PEP 562): most of this package pulls in torch,
and ``layout`` (the names of a snapshot's files) must not, since the supervisor imports it
at start. ``import jitc.snapshot.loader`` imports torch at once.
"""
from __future__ import annotations

from .. import _lazy

_WHERE = {"inspect_main": "inspect", "LoadedSnapshot": "loader", "check_compatible": "loader",
          "latest_complete": "loader", "load": "loader", "load_latest": "loader",
          "publish": "manifest", "verify_manifest": "verify"}

__all__ = ["publish", "latest_complete", "load", "load_latest", "inspect_main",
           "LoadedSnapshot", "check_compatible", "verify_manifest"]


__getattr__ = _lazy.attributes(__name__, _WHERE)
