"""jitc/snapshot/layout.py: the one place a snapshot's names are decided, and the index of
a snapshot with several shards (private, digested, its entries never leading outside)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jitc.errors import CorruptSnapshotError
from jitc.snapshot import layout
from jitc.snapshot.digest import digest_of


def test_names_round_trip(tmp_path: Path) -> None:
    assert layout.stripe_stem(1, 3) == "stripe-1-of-3"
    assert layout.stripe_file(1, 3) == "stripe-1-of-3.safetensors"
    assert layout.done_file(1, 3) == "stripe-1-of-3.done"
    assert layout.parse_done(layout.done_file(2, 3)) == (2, 3)
    for bad in ("stripe-3-of-3.done", "stripe-01-of-3.done", "stripe-0-of-3.done.tmp.5",
                "stripe-0-of-3.safetensors", ".stripe-0-of-1.done"):
        assert layout.parse_done(bad) is None, bad
    assert layout.is_stripe_file(layout.stripe_file(0, 1))
    assert not layout.is_stripe_file(layout.stripe_file(0, 1) + ".tmp.7")
    assert layout.manifest_path(tmp_path) == tmp_path / layout.MANIFEST == tmp_path / "manifest.json"

    d = layout.periodic_dir(tmp_path, 2, 40, 3)
    assert d == tmp_path / "snap-p2-s40-shard3"
    assert layout.parse_periodic(d.name) == (2, 40, 3)
    for bad in ("snap-p-s4-stages", "snap-a0-s4-0", "snap-p0-s4-shard", "snap-p0-s04-shard1"):
        assert layout.parse_periodic(bad) is None, bad
    assert layout.assembled_dir(tmp_path, 8) == tmp_path / "snap-p-s8-stages"
    assert layout.local_dir(tmp_path, 1, 7, 3) == tmp_path / "snap-a1-s7-3"

    assert layout.shard_dir(tmp_path, 0, 1) == tmp_path
    assert layout.shard_dir(tmp_path, 2, 4) == tmp_path / "shard-2"


def test_jit_dir_is_the_first_free_one(tmp_path: Path) -> None:
    assert layout.jit_dir(tmp_path, 1, 5) == tmp_path / "snap-a1-s5-0"
    (tmp_path / "snap-a1-s5-0").mkdir()
    (tmp_path / "snap-a1-s5-1").write_text("in the way")
    assert layout.jit_dir(tmp_path, 1, 5) == tmp_path / "snap-a1-s5-2"


def test_snapshot_dirs_lists_every_kind_and_only_directories(tmp_path: Path) -> None:
    assert layout.snapshot_dirs(tmp_path / "missing") == []
    made = [layout.jit_dir(tmp_path, 0, 3), layout.periodic_dir(tmp_path, 0, 4, 1),
            layout.assembled_dir(tmp_path, 4)]
    for d in made:
        d.mkdir()
    (tmp_path / "snap-file").write_text("not a directory")
    (tmp_path / "rank-state").mkdir()
    assert layout.snapshot_dirs(tmp_path) == sorted(made)


def test_plain_names() -> None:
    assert layout.is_plain_name("stripe-0-of-1")
    for bad in ("", "a/b", "..", "x..y", "a\0b", "x" * (layout.MAX_STEM + 1), 7, None):
        assert not layout.is_plain_name(bad), bad


def _shards(snap: Path, n: int) -> dict[int, Path]:
    out = {}
    for s in range(n):
        d = layout.shard_dir(snap, s, n)
        d.mkdir(parents=True)
        (d / layout.MANIFEST).write_text("{}")
        out[s] = layout.manifest_path(d)
    return out


def test_index_is_private_digested_and_round_trips(tmp_path: Path) -> None:
    snap = tmp_path / "snap-a0-s3-0"
    manifests = _shards(snap, 3)
    old = os.umask(0)
    try:
        path = layout.write_index(snap, manifests, world_size=6)
    finally:
        os.umask(old)
    assert path == snap / layout.INDEX
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    body = json.loads(path.read_text())
    assert body["digest"] == digest_of(body) and body["digest"].startswith("sha256:")
    assert body["shards"] == {"0": "shard-0/manifest.json", "1": "shard-1/manifest.json",
                              "2": "shard-2/manifest.json"}
    assert layout.read_index(path) == manifests
    assert [p.name for p in snap.iterdir() if p.name.endswith(".tmp")] == []


def test_index_refuses_a_manifest_outside_its_directory(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    (tmp_path / "other").mkdir()
    with pytest.raises(CorruptSnapshotError, match="not a manifest inside"):
        layout.write_index(snap, {0: tmp_path / "other" / "manifest.json"}, None)
    assert not (snap / layout.INDEX).exists()


def _forge(snap: Path, shards: dict, **extra) -> Path:
    body = {"format": layout.INDEX_FORMAT, "world_size": 2, "shards": shards, **extra}
    body["digest"] = digest_of(body)
    path = snap / layout.INDEX
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize("entry", [
    "../outside/manifest.json", "/etc/manifest.json", "shard-0/../../outside/manifest.json",
    "./shard-0/manifest.json", "shard-0/stripe-0-of-1.safetensors", "", "shard-0\\manifest.json",
    "a/b/c/manifest.json",
])
def test_traversing_index_entries_are_refused(tmp_path: Path, entry: str) -> None:
    snap = tmp_path / "snap"
    _shards(snap, 2)
    path = _forge(snap, {"0": "shard-0/manifest.json", "1": entry})
    with pytest.raises(CorruptSnapshotError, match=f"{path}: shard 1: "):
        layout.read_index(path)


def test_symlinked_index_entry_is_refused(tmp_path: Path) -> None:
    snap, outside = tmp_path / "snap", tmp_path / "outside"
    _shards(snap, 1)
    _shards(outside, 1)
    (snap / "shard-1").symlink_to(outside)
    path = _forge(snap, {"0": "shard-0/manifest.json", "1": "shard-1/manifest.json"})
    with pytest.raises(CorruptSnapshotError, match="leads outside the snapshot"):
        layout.read_index(path)
    inside = snap / "shard-2"
    inside.symlink_to(snap / "shard-0", target_is_directory=True)   # stays inside: fine
    path = _forge(snap, {"0": "shard-2/manifest.json"})
    assert layout.read_index(path) == {0: snap / "shard-2" / "manifest.json"}


@pytest.mark.parametrize("raw, why", [
    (b'{"format": "jitc-index/1", "world_size": NaN, "shards": {}, "digest": "x"}', "strict JSON"),
    (b'{"format": "jitc-index/1", "format": "x", "world_size": 1, "shards": {}, "digest": "x"}',
     "strict JSON"),
    (b'[1, 2]', "exactly the keys"),
    (b'\xff', "strict JSON"),
])
def test_malformed_index_is_one_line(tmp_path: Path, raw: bytes, why: str) -> None:
    path = tmp_path / layout.INDEX
    path.write_bytes(raw)
    with pytest.raises(CorruptSnapshotError, match=why) as e:
        layout.read_index(path)
    assert "\n" not in str(e.value)


def test_index_fields_are_exact_and_digested(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    manifests = _shards(snap, 2)
    path = layout.write_index(snap, manifests, 2)
    body = json.loads(path.read_text())
    body["shards"]["1"] = "shard-0/manifest.json"             # digest no longer matches
    path.write_text(json.dumps(body))
    with pytest.raises(CorruptSnapshotError, match="digest mismatch"):
        layout.read_index(path)
    with pytest.raises(CorruptSnapshotError, match="exactly the keys"):
        layout.read_index(_forge(snap, {"0": "shard-0/manifest.json"}, extra=1))
    for shards, why in (({"0": "shard-0/manifest.json", "1": "shard-0/manifest.json"},
                         "same manifest"),
                        ({"01": "shard-1/manifest.json"}, "bad entry"),
                        ({"-1": "shard-1/manifest.json"}, "bad entry"),
                        ({"0": 5}, "bad entry"), ({}, "no shards")):
        with pytest.raises(CorruptSnapshotError, match=why):
            layout.read_index(_forge(snap, shards))
    (snap / layout.INDEX).unlink()
    (snap / layout.INDEX).symlink_to(path.parent / "shard-0" / "manifest.json")
    with pytest.raises(CorruptSnapshotError, match="cannot read the index"):
        layout.read_index(snap / layout.INDEX)


def test_resume_manifest(tmp_path: Path) -> None:
    one = tmp_path / "snap-a0-s3-0"
    one.mkdir()
    m = layout.manifest_path(one)
    assert layout.resume_manifest(m, 0, 1) == m
    assert layout.resume_manifest(one, 0, 1) == m                  # the directory: its manifest
    with pytest.raises(CorruptSnapshotError, match="name the snapshot's index"):
        layout.resume_manifest(m, 1, 2)                            # a bare manifest, 2 shards

    snap = tmp_path / "snap-a0-s4-0"
    manifests = _shards(snap, 3)
    index = layout.write_index(snap, {0: manifests[0], 2: manifests[2]}, 3)
    assert layout.resume_manifest(index, 2, 3) == manifests[2]
    assert layout.resume_manifest(snap, 0, 3) == manifests[0]      # the directory: its index
    assert layout.resume_manifest(manifests[0], 2, 3) == manifests[2]   # the index decides
    with pytest.raises(CorruptSnapshotError, match="no entry for shard 1") as e:
        layout.resume_manifest(index, 1, 3)
    assert "\n" not in str(e.value)
    index.unlink()       # shards published before indexes existed: the layout's sibling
    assert layout.resume_manifest(manifests[0], 1, 3) == manifests[1]


def test_layout_does_not_import_torch() -> None:
    """The supervisor imports it (and tmpfiles) at start; torch costs seconds there."""
    code = ("import sys, jitc.snapshot.layout, jitc.tmpfiles; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
