"""inspect_main: listing and verdict by exit code (0 valid, 1 invalid, 2 not found)."""
from __future__ import annotations

import io

import pytest

from jitc.snapshot import inspect_main, layout, publish


def _run(path):
    out, err = io.StringIO(), io.StringIO()
    rc = inspect_main(path, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def _sharded(root, write_snapshot, n=2, step=5):
    snap = root / f"snap-a0-s{step}-0"
    manifests = {}
    for s in range(n):
        d = layout.shard_dir(snap, s, n)
        write_snapshot(d, 1, [0], step=step, seed=s)
        manifests[s] = publish(d)
    layout.write_index(snap, manifests, n)
    return snap, manifests


def test_inspect_a_snapshot_with_several_shards(tmp_path, write_snapshot):
    snap, manifests = _sharded(tmp_path, write_snapshot)
    rc, out, err = _run(snap)
    assert rc == 0, err
    assert "(2 shards)" in out and out.count("checksums: OK") == 2
    assert "shard 1:" in out and str(manifests[1].parent) in out
    assert _run(snap / layout.INDEX)[0] == 0
    stripe = manifests[1].parent / layout.stripe_file(0, 1)
    data = bytearray(stripe.read_bytes())
    data[-1] ^= 0xFF
    stripe.write_bytes(bytes(data))
    rc, out, err = _run(snap)                       # one bad shard: the snapshot is invalid
    assert rc == 1 and "shard-1" in err and "CRC32C" in err
    manifests[1].unlink()                           # missing, but the index promised it
    assert _run(snap)[0] == 1
    (snap / layout.INDEX).write_text('{"format": "jitc-index/1"}')
    rc, out, err = _run(snap)
    assert rc == 1 and "INVALID" in err and len(err.strip().splitlines()) == 1


def test_resume_from_an_index_picks_the_stage_own_shard(tmp_path, write_snapshot, monkeypatch):
    from jitc import resume
    from jitc.errors import NoSnapshotError
    snap, manifests = _sharded(tmp_path, write_snapshot)
    for named in (snap, snap / layout.INDEX, manifests[0]):
        monkeypatch.setenv("JITC_RESUME", str(named))
        path, loaded = resume.choose(True, stage=1, num_stages=2)
        assert path == manifests[1] and loaded.step == 5, named
    monkeypatch.setenv("JITC_DIR", str(tmp_path))
    monkeypatch.setenv("JITC_RESUME", str(snap / layout.INDEX))
    with pytest.raises(NoSnapshotError, match="no entry for shard 2"):
        resume.choose(True, stage=2, num_stages=3)


def test_inspect_valid_invalid_missing(tmp_path, write_snapshot):
    d = tmp_path / "snap-a0-s7-0"
    write_snapshot(d, 2, [0, 1], step=7)
    publish(d)
    rc, out, err = _run(d)
    assert rc == 0, err
    assert "step 7" in out and "stripe-1-of-2.safetensors" in out
    assert "tensor b16  BF16  [33]  66 bytes" in out
    assert "tensor scalar  F32  []  4 bytes" in out
    assert "checksums: OK" in out
    assert _run(d / "manifest.json")[0] == 0

    f = d / "stripe-1-of-2.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    rc, out, err = _run(d)
    assert rc == 1
    assert "stripe-1-of-2.safetensors" in err and "CRC32C" in err
    assert len(err.strip().splitlines()) == 1

    assert _run(tmp_path / "nope")[0] == 2
    (tmp_path / "empty").mkdir()
    assert _run(tmp_path / "empty")[0] == 2


def _tree(d):
    """Everything inspect could change: names, sizes, modes, mtimes (dir included)."""
    st = d.stat()
    return (st.st_mtime_ns, st.st_mode, sorted(
        (p.name, p.stat().st_size, p.stat().st_mode, p.stat().st_mtime_ns) for p in d.iterdir()))


def test_inspect_verifies_an_unpublished_dir_without_writing(tmp_path, write_snapshot):
    d = tmp_path / "snap-a0-s1-0"
    write_snapshot(d, 2, [0, 1], step=1)
    before = _tree(d)
    rc, out, err = _run(d)
    assert rc == 0, err
    assert "not published" in out and "checksums: OK" in out
    assert _tree(d) == before and not (d / "manifest.json").exists()
    # A damaged unpublished one: invalid, still nothing written.
    f = d / "stripe-0-of-2.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    before = _tree(d)
    rc, out, err = _run(d)
    assert rc == 1 and "CRC32C" in err and len(err.strip().splitlines()) == 1
    assert _tree(d) == before


def test_inspect_never_writes_into_a_published_dir(tmp_path, write_snapshot):
    d = tmp_path / "snap-a0-s1-0"
    write_snapshot(d, 1, [0], step=1)
    publish(d)
    before = _tree(d)
    assert _run(d)[0] == 0
    assert _tree(d) == before
    (d / "manifest.json").write_text("{")
    before = _tree(d)
    assert _run(d)[0] == 1
    assert _tree(d) == before
