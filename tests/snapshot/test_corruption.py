"""Bad state on disk is never loaded: truncated file, flipped byte, missing manifest,
missing stripe, a snapshot of another model -> CorruptSnapshotError naming the file, and
latest_complete falls back to the older good snapshot."""
from __future__ import annotations

import json
import logging

import pytest

from .conftest import bitwise_equal, expected_tensors, reseal

from jitc.errors import CorruptSnapshotError
from jitc.snapshot import check_compatible, latest_complete, load, publish


@pytest.fixture
def two_snapshots(tmp_path, write_snapshot):
    """An older good snapshot (step 3) and a newer one (step 4, 2 stripes) to damage."""
    old, new = tmp_path / "snap-a0-s3-0", tmp_path / "snap-a0-s4-0"
    write_snapshot(old, 1, [0], step=3)
    write_snapshot(new, 2, [0, 1], step=4, seed=1)
    publish(old)
    publish(new)
    assert latest_complete(tmp_path) == new / "manifest.json"
    return tmp_path, old, new


def _falls_back(root, old, caplog, needle):
    with caplog.at_level(logging.WARNING, logger="jitc.snapshot.loader"):
        m = latest_complete(root)
    assert m == old / "manifest.json"
    assert needle in caplog.text, caplog.text
    snap = load(m)
    assert snap.step == 3
    assert bitwise_equal(snap.tensors["w"], expected_tensors(0)["w"])


def test_truncated_file(two_snapshots, caplog):
    root, old, new = two_snapshots
    f = new / "stripe-1-of-2.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 5)
    with pytest.raises(CorruptSnapshotError, match="stripe-1-of-2.safetensors.*truncated"):
        load(new / "manifest.json")
    _falls_back(root, old, caplog, "stripe-1-of-2.safetensors")


def test_flipped_byte(two_snapshots, caplog):
    root, old, new = two_snapshots
    f = new / "stripe-0-of-2.safetensors"
    data = bytearray(f.read_bytes())
    data[-20] ^= 0x01                            # inside the data section: header still parses
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError, match="stripe-0-of-2.safetensors: CRC32C"):
        load(new / "manifest.json")
    _falls_back(root, old, caplog, "CRC32C")


def test_flipped_byte_in_header(two_snapshots, caplog):
    root, old, new = two_snapshots
    f = new / "stripe-0-of-2.safetensors"
    data = bytearray(f.read_bytes())
    data[9] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError, match="stripe-0-of-2.safetensors"):
        load(new / "manifest.json")
    _falls_back(root, old, caplog, "stripe-0-of-2.safetensors")


def test_missing_manifest_and_no_records(two_snapshots, caplog):
    root, old, new = two_snapshots
    (new / "manifest.json").unlink()
    (new / "stripe-1-of-2.done").unlink()        # incomplete: must not be published
    with pytest.raises(CorruptSnapshotError, match="manifest.json: manifest missing"):
        load(new / "manifest.json")
    assert latest_complete(root) == old / "manifest.json"
    assert not (new / "manifest.json").exists()


def test_missing_stripe_file(two_snapshots, caplog):
    root, old, new = two_snapshots
    (new / "stripe-1-of-2.safetensors").unlink()
    with pytest.raises(CorruptSnapshotError, match="stripe-1-of-2.safetensors: stripe file missing"):
        load(new / "manifest.json")
    _falls_back(root, old, caplog, "stripe file missing")


def test_garbled_manifest(two_snapshots, caplog):
    root, old, new = two_snapshots
    (new / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptSnapshotError, match="manifest.json: not JSON"):
        load(new / "manifest.json")
    _falls_back(root, old, caplog, "not JSON")


def test_manifest_lies_about_crc(two_snapshots, caplog):
    root, old, new = two_snapshots
    m = json.loads((new / "manifest.json").read_text())
    m["files"]["stripe-1-of-2.safetensors"]["crc32c"] ^= 1
    (new / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptSnapshotError, match="manifest.json: manifest digest mismatch"):
        load(new / "manifest.json")
    reseal(new / "manifest.json", m)             # the digest recomputed: the CRC still lies
    with pytest.raises(CorruptSnapshotError, match="stripe-1-of-2.safetensors: CRC32C"):
        load(new / "manifest.json")
    _falls_back(root, old, caplog, "CRC32C")


def test_other_model(tmp_path, write_snapshot):
    d = tmp_path / "snap-a0-s1-0"
    write_snapshot(d, 2, [0, 1], step=1, variant="other")
    snap = load(publish(d))
    mine = {n: (t.dtype, tuple(t.shape)) for n, t in expected_tensors(0).items()}
    with pytest.raises(CorruptSnapshotError, match=r"is from another model: 'w'"):
        check_compatible(snap, mine)
    # same model: accepted
    check_compatible(snap, {n: (t.dtype, tuple(t.shape))
                            for n, t in expected_tensors(0, "other").items()})
    del mine["big"]
    with pytest.raises(CorruptSnapshotError, match="unexpected tensor 'big'"):
        check_compatible(snap, {**mine, "w": (mine["w"][0], (7, 5))})
