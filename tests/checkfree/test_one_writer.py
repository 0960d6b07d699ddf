"""A rebuilt stage is written by the ranks' own native engine (jitc_write_tensors).

The assertions are about the outcome: the stage verifies and loads bitwise, and its stripe
file is byte for byte the one a rank writes when it registers the same tensors through the
real shim; refusals and failures are one line with errno name and path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from jitc._shim import ffi_lib
from jitc.checkfree.writer import write_snapshot
from jitc.errors import SnapshotError
from jitc.snapshot import layout, load
from jitc.snapshot.meta import encode
from jitc.snapshot.verify import verify_manifest

STEP = 7
STRIPE, DONE = layout.stripe_file(0, 1), layout.done_file(0, 1)


def stage() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"model.w": torch.randn(5, 3, generator=g),
            "model.b": torch.randn(7, generator=g).to(torch.bfloat16),
            "step": torch.tensor(STEP, dtype=torch.int64),
            "empty": torch.zeros(0, 4),
            "model.t": torch.randn(4, 6, generator=g).t()}   # not contiguous


def meta() -> bytes:
    return encode({"completed": STEP, "pipeline": {"stage": 2, "num_stages": 4}})


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def clean_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("JITC_SOCKET", "JITC_DIR", "JITC_INJECT", "JITC_DEBUG", "LD_PRELOAD"):
        env.pop(k, None)
    return env


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean_env(),
                          capture_output=True, text=True, timeout=120)


def test_stage_verifies_and_loads_bitwise(tmp_path):
    tensors = stage()
    manifest = write_snapshot(tmp_path / "snap" / "shard-2", STEP, tensors, meta(), world_size=4)
    m = verify_manifest(manifest)
    assert m["step"] == STEP and m["nstripes"] == 1 and m["world_size"] == 4
    snap = load(manifest)
    assert list(snap.tensors) == list(tensors)            # registration order kept
    assert all(same_bits(snap.tensors[k], v) for k, v in tensors.items())
    assert snap.meta == meta()
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json", DONE, STRIPE]


def test_stripe_is_the_one_a_rank_writes_for_the_same_tensors(tmp_path):
    tensors = stage()
    ours = write_snapshot(tmp_path / "supervisor", STEP, tensors, meta()).parent
    torch.save({"tensors": tensors, "meta": meta()}, tmp_path / "state.pt")
    # A rank on the real shim (not preloaded, no supervisor): register, set meta, write.
    p = run_py(f"""
        import torch
        from jitc._shim import check, ffi_lib
        from jitc.snapshot.format import dtype_name
        s = torch.load({str(tmp_path / "state.pt")!r})
        ffi, lib = ffi_lib()
        check(lib.jitc_init(0, 0, 1, 0, 1), "init")
        check(lib.jitc_registry_begin(), "begin")
        keep = {{k: v.contiguous() for k, v in s["tensors"].items()}}
        for k, t in keep.items():
            check(lib.jitc_registry_add(k.encode(), ffi.cast("void *", t.data_ptr()),
                                        t.numel() * t.element_size(), dtype_name(t.dtype).encode(),
                                        ffi.new("int64_t[]", list(t.shape)), t.dim(), -1), k)
        check(lib.jitc_registry_commit(), "commit")
        check(lib.jitc_set_meta(s["meta"], len(s["meta"])), "meta")
        check(lib.jitc_step_begin({STEP}), "step")
        stem = ffi.new("char[]", b"stripe-0-of-1")
        check(lib.jitc_snapshot_write({str(tmp_path / "rank")!r}.encode(), 1, ffi.new("int[]", [0]),
                                      ffi.new("char *[]", [stem]), 1, 30.0, ffi.new("int64_t *")),
              "write")
        lib.jitc_shutdown(1)
    """)
    assert p.returncode == 0, p.stderr
    rank = tmp_path / "rank"
    assert (ours / STRIPE).read_bytes() == (rank / STRIPE).read_bytes()
    assert json.loads((ours / DONE).read_text()) == json.loads((rank / DONE).read_text())
    assert verify_manifest(ours / "manifest.json")["fingerprint"] == \
        json.loads((rank / DONE).read_text())["fingerprint"]


def test_the_call_starts_no_thread_and_prints_nothing(tmp_path):
    p = run_py(f"""
        import os, torch
        from jitc.checkfree.writer import write_snapshot
        from jitc.snapshot.meta import encode
        torch.set_num_threads(1)
        t = {{"w": torch.ones(3)}}
        threads = lambda: len(os.listdir("/proc/self/task"))
        write_snapshot({str(tmp_path / "a" / "s")!r}, 1, t, encode({{"completed": 1}}))
        before = threads()
        write_snapshot({str(tmp_path / "b" / "s")!r}, 1, t, encode({{"completed": 1}}))
        print(threads() - before)
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "0\n" and p.stderr == ""


def test_a_directory_outside_the_root_is_refused_in_one_line(tmp_path):
    ffi, lib = ffi_lib()
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere" / "shard-2"
    root.mkdir(mode=0o700)
    status = lib.jitc_write_tensors(str(root).encode(), str(elsewhere).encode(), b"stripe-0-of-1",
                                    1, ffi.new("jitc_tensor[]", 0), 0, b"", 0, 10.0)
    why = ffi.string(lib.jitc_last_error()).decode()
    assert status == 1 and "\n" not in why
    assert why == (f"jitc_write_tensors: snapshot directory {elsewhere} is outside the "
                   f"snapshot root {root}")
    assert not elsewhere.parent.exists()


def test_a_symlinked_stage_directory_is_refused(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "shard-2").symlink_to(target)
    with pytest.raises(SnapshotError, match="is a symlink or not a directory") as e:
        write_snapshot(tmp_path / "snap" / "shard-2", STEP, stage(), meta())
    assert "\n" not in str(e.value)
    assert list(target.iterdir()) == []


def test_a_failed_write_names_errno_and_path(tmp_path):
    d = tmp_path / "snap" / "shard-2"
    (d / STRIPE).mkdir(parents=True)      # the stripe's final name is taken by a directory
    with pytest.raises(SnapshotError) as e:
        write_snapshot(d, STEP, stage(), meta())
    assert str(e.value) == (f"jitc_write_tensors: rename {d / STRIPE}.tmp.{os.getpid()}: "
                            "EISDIR (Is a directory)")
    assert sorted(p.name for p in d.iterdir()) == [STRIPE]   # the temporary was removed


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_directory_names_errno_and_path(tmp_path):
    d = tmp_path / "snap" / "shard-2"
    d.mkdir(parents=True)
    d.chmod(0o500)
    try:
        with pytest.raises(SnapshotError) as e:
            write_snapshot(d, STEP, stage(), meta())
    finally:
        d.chmod(0o700)
    assert str(e.value) == (f"jitc_write_tensors: open {d / STRIPE}.tmp.{os.getpid()}: "
                            "EACCES (Permission denied)")


def test_a_bad_tensor_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(SnapshotError, match="tensor __jitc_meta__: reserved name"):
        write_snapshot(tmp_path / "snap" / "shard-2", STEP, {"__jitc_meta__": torch.ones(1)},
                       meta())
    assert not (tmp_path / "snap" / "shard-2").exists()
