"""Fixtures for the snapshot tests.

The library comes from ``jitc._lib.lib_path()`` (JITC_LIB or the installed package). If
that library does not have the registry/snapshot C API yet (or is not built), the engine's
sources are compiled with a test stand-in for the core (native/stub_core.cpp) into a
private library, so the snapshot engine is tested on its own either way.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
from ._state import make_meta, make_state

_NEEDED = ("jitc_registry_begin", "jitc_registry_add", "jitc_registry_commit", "jitc_set_meta",
           "jitc_snapshot_write", "jitc_crc32c", "jitc_step_begin")


def _real_lib() -> Path | None:
    from jitc._lib import lib_path
    from jitc.errors import ShimError
    try:
        path = lib_path()
    except ShimError:
        return None
    lib = ctypes.CDLL(str(path))
    return path if all(hasattr(lib, s) for s in _NEEDED) else None


def build_private_lib(out_dir: Path) -> Path:
    out = out_dir / "libjitc.so"
    srcs = sorted(str(p) for p in (REPO / "csrc" / "snapshot").glob("*.cpp"))
    cmd = ["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
           "-fvisibility=hidden", f"-I{REPO / 'csrc'}", *srcs,
           str(HERE / "native" / "stub_core.cpp"), "-o", str(out), "-lpthread",
           "-Wl,--no-undefined"]
    subprocess.run(cmd, check=True, timeout=240)
    shutil.copy(REPO / "csrc" / "jitc.h", out_dir / "jitc.h")
    return out


@pytest.fixture(scope="session")
def snapshot_lib(tmp_path_factory) -> Path:
    """Path of the library the writer subprocesses and the checksum code use."""
    path = _real_lib()
    if path is None:
        path = build_private_lib(tmp_path_factory.mktemp("snaplib"))
        os.environ["JITC_LIB"] = str(path)
        from jitc import _shim
        _shim.ffi_lib.cache_clear()
    return path


def _env(lib: Path) -> dict[str, str]:
    env = dict(os.environ, JITC_LIB=str(lib), OMP_NUM_THREADS="1")
    for k in ("JITC_SOCKET", "JITC_DIR", "JITC_INJECT", "LD_PRELOAD"):
        env.pop(k, None)
    return env


def writer_cmd(d: Path, nstripes: int, stripes, step: int, seed: int = 0,
               variant: str = "base") -> list[str]:
    return [sys.executable, str(HERE / "_writer.py"), "--dir", str(d), "--nstripes",
            str(nstripes), "--stripes", ",".join(map(str, stripes)), "--step", str(step),
            "--seed", str(seed), "--variant", variant]


@pytest.fixture
def write_snapshot(snapshot_lib):
    """write_snapshot(dir, nstripes, stripes, step, seed=0, variant="base") in a subprocess."""
    def run(d: Path, nstripes: int, stripes, step: int, seed: int = 0, variant: str = "base"):
        p = subprocess.run(writer_cmd(d, nstripes, stripes, step, seed, variant),
                           env=_env(snapshot_lib), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert int(p.stdout.split()[-1]) == step
        return p
    return run


@pytest.fixture
def writer_env(snapshot_lib):
    return _env(snapshot_lib)


def expected_tensors(seed: int = 0, variant: str = "base") -> dict[str, torch.Tensor]:
    out = {}
    for name, dtype, arr in make_state(seed, variant):
        t = torch.from_numpy(arr.copy(order="C"))
        out[name] = t.view(torch.bfloat16) if dtype == "BF16" else t
    return out


def expected_meta(seed: int, step: int) -> bytes:
    return make_meta(seed, step)


def reseal(manifest: Path, m: dict) -> None:
    """Write manifest ``m`` with its digest recomputed, as whoever edits it on purpose
    would: then only the checks against the stripes can tell."""
    from jitc.snapshot.manifest import DIGEST, manifest_digest
    m = {**m, DIGEST: manifest_digest(m)}
    manifest.write_text(json.dumps(m, indent=1))


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))
