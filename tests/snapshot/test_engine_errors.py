"""Engine error paths through the C API: bad registrations are refused with a reason, a
write into an unwritable place fails with JITC_E_IO naming the path, and two processes
publishing the same directory at the same time both succeed with one valid manifest."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from .conftest import REPO

from jitc.snapshot import load

_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from jitc._shim import c_strings, ffi_lib
    ffi, lib = ffi_lib()
    assert lib.jitc_init(0, 0, 1, 0, 1) == 0
    a = np.zeros(4, dtype=np.float32)
    p = ffi.cast("void*", a.ctypes.data)
    shape = ffi.new("int64_t[]", [4])
    err = lambda: ffi.string(lib.jitc_last_error()).decode()
    assert lib.jitc_registry_begin() == 0
    out = []
    out.append((lib.jitc_registry_add(b"x", p, 15, b"F32", shape, 1, -1), err()))
    out.append((lib.jitc_registry_add(b"x@1", p, 16, b"F32", shape, 1, -1), err()))
    out.append((lib.jitc_registry_add(b"x", p, 16, b"Q7", shape, 1, -1), err()))
    out.append((lib.jitc_registry_add(b"x", p, 16, b"F32", shape, 1, -1), ""))
    out.append((lib.jitc_registry_add(b"x", p, 16, b"F32", shape, 1, -1), err()))
    assert lib.jitc_registry_commit() == 0
    assert lib.jitc_step_begin(1) == 0
    step = ffi.new("int64_t*")
    stems, _keep = c_strings(["stripe-0-of-1"])
    rc = lib.jitc_snapshot_write(sys.argv[1].encode(), 1, ffi.new("int[]", [0]), stems, 1, 10.0,
                                 step)
    out.append((rc, err()))
    for rc, msg in out:
        print(rc, msg)
    lib.jitc_shutdown(1)
""")


def test_bad_registrations_and_io_error(tmp_path, writer_env):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    p = subprocess.run([sys.executable, "-c", _PROBE, str(blocker / "snap")], env=writer_env,
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("1 ") and "nbytes 15" in lines[0]
    assert lines[1].startswith("1 ") and "'@'" in lines[1]
    assert lines[2].startswith("1 ") and "unknown dtype" in lines[2]
    assert lines[3] == "0 "
    assert lines[4].startswith("1 ") and "duplicate" in lines[4]
    assert lines[5].startswith("3 ") and str(blocker) in lines[5]   # JITC_E_IO, names the path


_PUBLISH = "import sys; from jitc.snapshot import publish\nfor _ in range(30): publish(sys.argv[1])"


def test_concurrent_publish(tmp_path, write_snapshot, writer_env):
    d = tmp_path / "snap-a0-s6-0"
    write_snapshot(d, 2, [0, 1], step=6)
    procs = [subprocess.Popen([sys.executable, "-c", _PUBLISH, str(d)], env=writer_env,
                              cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert load(d / "manifest.json").step == 6
    assert [f.name for f in d.iterdir() if "manifest" in f.name] == ["manifest.json"]
