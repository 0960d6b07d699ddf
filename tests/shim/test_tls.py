"""libjitc.so's thread-local block stays small.

One initial-exec thread-local (the interposers' per-thread state) marks the library
STATIC_TLS: glibc must then fit its whole TLS block into the surplus it reserved at start.
At 1.6 KiB, loading the library after torch (``jitc inspect``, the Python binding in a
process that was not preloaded) failed with "cannot allocate memory in static TLS block".
"""
from __future__ import annotations

import struct
import subprocess
import sys

from jitc._lib import lib_path

PT_TLS = 7
MAX_TLS_BYTES = 256


def _tls_memsz(path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "expected a 64-bit ELF"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        p_type, = struct.unpack_from("<I", data, off)
        if p_type == PT_TLS:
            return struct.unpack_from("<Q", data, off + 0x28)[0]
    return 0


def test_thread_local_block_is_small():
    assert _tls_memsz(lib_path()) <= MAX_TLS_BYTES


def test_loads_after_torch_without_preload():
    code = ("import torch\nfrom jitc._shim import ffi_lib\nffi, lib = ffi_lib()\n"
            "assert lib.jitc_step_begin(1) != 0\n"
            "print(ffi.string(lib.jitc_last_error()).decode())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "not initialised" in p.stdout
