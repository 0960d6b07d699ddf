"""Stripe assignment (csrc/snapshot/stripes.cpp), checked exhaustively by a native test
program: coverage of every element exactly once, piece naming, determinism, balance."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_assign_stripes_native(tmp_path):
    exe = tmp_path / "test_stripes"
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
                    f"-I{REPO / 'csrc'}", str(Path(__file__).parent / "native" / "test_stripes.cpp"),
                    str(REPO / "csrc" / "snapshot" / "stripes.cpp"), "-o", str(exe)],
                   check=True, timeout=120)
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("OK "), p.stdout
    assert int(p.stdout.split()[1]) == 36000
