"""Binding to the preloaded instance of libjitc.so (cffi, ABI mode).

The library is normally already in the process (LD_PRELOAD). dlopen of the same path then
returns that very instance, so the state the interposers see and the state Python drives
are one. Without LD_PRELOAD the library is loaded here; the C API works, but CUDA/NCCL
calls are not intercepted (a warning says so once, under JITC_DEBUG).
"""
from __future__ import annotations

import functools
import os
import re

import cffi

from . import env
from ._lib import lib_path
from .errors import ShimError


STATUS_NAMES = {
    0: "OK", 1: "INVALID", 2: "STATE", 3: "IO", 4: "TIMEOUT", 5: "NOMEM", 6: "CHANNEL",
    7: "CORRUPT", 8: "BUSY",
}


def _cdef_source() -> str:
    # Installed next to the library (CMake), so wheels and editable installs both have it.
    header = lib_path().with_name("jitc.h")
    with open(header, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"/\* cffi-begin \*/(.*)/\* cffi-end \*/", text, re.S)
    if match is None:
        raise ShimError(f"{header}: cffi markers missing")
    return match.group(1).replace("JITC_API ", "")


@functools.lru_cache(maxsize=1)
def ffi_lib():
    """(ffi, lib) for the library, loaded once per process."""
    ffi = cffi.FFI()
    ffi.cdef(_cdef_source())
    path = str(lib_path())
    preloaded = path in env.get(env.LD_PRELOAD, "") or any(
        os.path.basename(p) == "libjitc.so" for p in env.get(env.LD_PRELOAD, "").split(":"))
    lib = ffi.dlopen(path)
    if not preloaded and env.get(env.DEBUG) == "1":
        import sys
        print(f"[jitc {os.getpid()}] libjitc.so not preloaded: CUDA/NCCL calls are not "
              "intercepted", file=sys.stderr)
    return ffi, lib


def c_strings(names: list[str]):
    """(``char *[]`` of ``names``, the buffers it points into) for a C call: keep both
    alive until the call returns."""
    ffi, _ = ffi_lib()
    buffers = [ffi.new("char[]", name.encode()) for name in names]
    return ffi.new("char *[]", buffers), buffers


def check(status: int, what: str) -> None:
    """Raise ShimError for a non-zero jitc_status."""
    if status != 0:
        ffi, lib = ffi_lib()
        detail = ffi.string(lib.jitc_last_error()).decode(errors="replace")
        name = STATUS_NAMES.get(status, str(status))
        raise ShimError(f"{what}: {name}: {detail}")
