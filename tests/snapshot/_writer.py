"""Writes snapshot stripes through the shim's C API, like a rank would (run as a
subprocess by the tests; JITC_LIB names the library). Prints the written step."""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from _state import make_meta, make_state  # noqa: E402

from jitc._shim import c_strings, check, ffi_lib  # noqa: E402
from jitc.snapshot.layout import stripe_stem  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--nstripes", type=int, required=True)
    ap.add_argument("--stripes", required=True)
    ap.add_argument("--step", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="base")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    ffi, lib = ffi_lib()
    check(lib.jitc_init(0, 0, 1, 0, 1), "init")
    state = make_state(a.seed, a.variant)
    check(lib.jitc_registry_begin(), "registry_begin")
    for name, dtype, arr in state:
        shape = ffi.new("int64_t[]", list(arr.shape) or [0])
        ptr = ffi.cast("void*", arr.ctypes.data)
        check(lib.jitc_registry_add(name.encode(), ptr, arr.nbytes, dtype.encode(), shape,
                                    arr.ndim, -1), f"registry_add {name}")
    check(lib.jitc_registry_commit(), "registry_commit")
    meta = make_meta(a.seed, a.step)
    check(lib.jitc_set_meta(meta, len(meta)), "set_meta")
    check(lib.jitc_step_begin(a.step), "step_begin")
    stripes = [int(s) for s in a.stripes.split(",")]
    step_out = ffi.new("int64_t*")
    stems, _keep = c_strings([stripe_stem(j, a.nstripes) for j in stripes])
    check(lib.jitc_snapshot_write(a.dir.encode(), a.nstripes, ffi.new("int[]", stripes),
                                  stems, len(stripes), a.timeout, step_out), "snapshot_write")
    print(step_out[0])
    lib.jitc_shutdown(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
