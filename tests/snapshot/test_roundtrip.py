"""Write through the C API -> publish -> load gives bitwise-equal tensors (several dtypes,
bf16, 0-d, empty, a tensor split across stripes), with stripes written by one process or
by k separate processes; every stripe file is readable by the safetensors package."""
from __future__ import annotations

import json
import subprocess

import pytest
from safetensors import safe_open

from ._state import make_state_dict
from .conftest import bitwise_equal, expected_meta, expected_tensors, writer_cmd

from jitc.snapshot import latest_complete, load, publish


def _assert_loaded(manifest, step, seed=0):
    snap = load(manifest)
    assert snap.step == step
    exp = expected_tensors(seed)
    assert list(snap.tensors) == list(exp)       # registration order kept
    for name, t in exp.items():
        assert bitwise_equal(snap.tensors[name], t), name
    assert snap.meta == expected_meta(seed, step)
    assert snap.state == make_state_dict(seed, step)
    return snap


@pytest.mark.parametrize("k", [1, 3])
def test_roundtrip_one_process(tmp_path, write_snapshot, k):
    d = tmp_path / "snap-a0-s5-0"
    write_snapshot(d, k, range(k), step=5)
    for j in range(k):
        f = d / f"stripe-{j}-of-{k}.safetensors"
        rec = json.loads((d / f"stripe-{j}-of-{k}.done").read_text())
        assert rec["step"] == 5 and rec["bytes"] == f.stat().st_size
        with safe_open(str(f), framework="pt") as st:
            assert "__jitc_meta__" in st.keys()
            assert st.metadata()["stripe"] == str(j)
    assert not list(d.glob("*.tmp*"))
    snap = _assert_loaded(publish(d), 5)
    if k > 1:
        assert len(snap.manifest["tensors"]["big"]["chunks"]) > 1   # split across stripes


def test_stripes_by_separate_processes(tmp_path, writer_env):
    k = 4
    d = tmp_path / "snap-a0-s9-0"
    procs = [subprocess.Popen(writer_cmd(d, k, [j], step=9, seed=3), env=writer_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for j in range(k)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    # Two publishers at once must both succeed and leave one valid manifest.
    m1, m2 = publish(d), publish(d)
    assert m1 == m2
    _assert_loaded(m1, 9, seed=3)
    assert latest_complete(tmp_path) == m1


def test_unpublished_complete_dir_is_published_by_latest_complete(tmp_path, write_snapshot):
    d = tmp_path / "snap-a0-s2-0"
    write_snapshot(d, 1, [0], step=2)
    assert not (d / "manifest.json").exists()
    m = latest_complete(tmp_path)
    assert m == d / "manifest.json" and m.is_file()
    _assert_loaded(m, 2)


def test_incomplete_dir_is_not_published(tmp_path, write_snapshot):
    d = tmp_path / "snap-a0-s2-0"
    write_snapshot(d, 2, [0], step=2)            # stripe 1 of 2 never written
    assert latest_complete(tmp_path) is None
    assert not (d / "manifest.json").exists()
