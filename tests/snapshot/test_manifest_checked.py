"""The manifest is checked, not trusted (issue 13, "Found" 3): every case below is refused
by ``jitc inspect`` (exit 1, one line), by ``load`` (CorruptSnapshotError, nothing else),
and the resume search skips it and loads the older valid snapshot beside it, bitwise.

Each damage is tried twice: as it is (the manifest's digest no longer matches) and
re-sealed with a recomputed digest, as someone editing it on purpose would; then only the
check of every entry against the stripe headers can tell.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest

from .conftest import bitwise_equal, expected_tensors, reseal, writer_cmd, _env

from jitc.errors import CorruptSnapshotError
from jitc.snapshot import inspect_main, latest_complete, load, load_latest, publish


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, snapshot_lib):
    """An older valid snapshot (step 3) and a newer one (step 4, two stripes, a tensor
    split across them) of a model with two alike layers, written by the shim."""
    base = tmp_path_factory.mktemp("pristine")
    for name, step, seed in (("snap-a0-s3-0", 3, 0), ("snap-a0-s4-0", 4, 1)):
        p = subprocess.run(writer_cmd(base / name, 2, [0, 1], step, seed, "blocks"),
                           env=_env(snapshot_lib), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        publish(base / name)
    m = json.loads((base / "snap-a0-s4-0" / "manifest.json").read_text())
    assert len(m["tensors"]["blocks.1.w"]["chunks"]) == 2     # split across the stripes
    return base


def _rename_text(text: str) -> str:
    # One flipped byte: the key "blocks.1.b" becomes a second "blocks.0.b", and JSON keeps
    # the last one: layer 1's bias would be loaded as layer 0's.
    i = text.index('"blocks.1.b"')
    return text[:i + 8] + "0" + text[i + 9:]


def _edit(field):
    def apply(text: str) -> str:
        m = json.loads(text)
        field(m)
        return json.dumps(m, indent=1)
    return apply


def _set(path, value):
    def field(m):
        obj = m
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return _edit(field)


CASES = {
    "renamed tensor": _rename_text,
    "shape 64x63": _set(("tensors", "blocks.0.w", "shape"), [64, 63]),
    "shape 2^40 x 2^40": _set(("tensors", "blocks.0.w", "shape"), [2**40, 2**40]),
    "string in a shape": _set(("tensors", "blocks.0.w", "shape"), ["64", 64]),
    "float in a shape": _set(("tensors", "blocks.0.b", "shape"), [64.0]),
    "list as the tensor index": _set(("tensors",), [["blocks.0.w"]]),
    "list as a file name": _set(("tensors", "blocks.0.b", "chunks"),
                                [[["stripe-0-of-2.safetensors"], "blocks.0.b", 0, 64]]),
    "list as the meta key": _set(("meta", "key"), ["__jitc_meta__"]),
    "chunk range short": _set(("tensors", "blocks.1.w", "chunks", 0, 3), 100),
    "chunk in the other file": _set(("tensors", "blocks.0.b", "chunks", 0, 0),
                                    "stripe-0-of-2.safetensors"),
    "string as the step": _set(("step",), "4"),
    "step of the older one": _set(("step",), 3),
    "list as nstripes": _set(("nstripes",), [2]),
    "dtype": _set(("tensors", "blocks.0.w", "dtype"), "I32"),
    "meta size": _set(("meta", "bytes"), 1),
    "file entry a list": _set(("files", "stripe-1-of-2.safetensors"), [1, 2]),
    "extra file": _set(("files", "../escape"), {"bytes": 1, "crc32c": 0}),
    "not an object": lambda text: "[]",
    "NaN": lambda text: text.replace('"rng": "registered"', '"rng": NaN'),
}


@pytest.mark.parametrize("resealed", [False, True], ids=["as-is", "resealed"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_manifest_is_refused_and_the_older_one_loaded(pristine, tmp_path, caplog,
                                                              case, resealed):
    root = tmp_path / "root"
    shutil.copytree(pristine, root)
    manifest = root / "snap-a0-s4-0" / "manifest.json"
    text = CASES[case](manifest.read_text())
    manifest.write_text(text)
    if resealed:
        try:
            m = json.loads(text)
        except ValueError:
            m = None
        if isinstance(m, dict):
            try:
                reseal(manifest, m)
            except ValueError:
                pass        # NaN: no digest can be computed for it

    out, err = io.StringIO(), io.StringIO()
    assert inspect_main(manifest.parent, out=out, err=err) == 1, out.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert "manifest.json" in err.getvalue() or "safetensors" in err.getvalue()
    with pytest.raises(CorruptSnapshotError):
        load(manifest)

    assert latest_complete(root) == root / "snap-a0-s3-0" / "manifest.json"
    snap = load_latest(root)
    assert snap is not None and snap.step == 3
    want = expected_tensors(0, "blocks")
    assert list(snap.tensors) == list(want)
    for name, t in want.items():
        assert bitwise_equal(snap.tensors[name], t), name
    assert "skipping snapshot" in caplog.text and "snap-a0-s4-0" in caplog.text


def test_the_pristine_snapshots_load(pristine):
    for name, step, seed in (("snap-a0-s3-0", 3, 0), ("snap-a0-s4-0", 4, 1)):
        snap = load(pristine / name / "manifest.json")
        assert snap.step == step
        for k, t in expected_tensors(seed, "blocks").items():
            assert bitwise_equal(snap.tensors[k], t), k
    assert load_latest(pristine).step == 4
