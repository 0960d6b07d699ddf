"""Issue 13, "Run dir takeover": a SNAPSHOT command from whoever holds the socket made the
rank's agent create and fill any directory it named. The agent writes only below the
snapshot root it was given at start (JITC_DIR), in a real rank process with the real
libjitc.so."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from jitc.protocol import Msg
from jitc.snapshot.layout import MAX_STEM, stripe_stem
from tests.shim.conftest import INIT, FakeSupervisor, register, spawn

REGISTER = register(1024) + """
lib.jitc_step_begin(3)
lib.jitc_steps_finished(3)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def sup(tmp_path_factory):
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="jitc-", dir="/tmp")
    s = FakeSupervisor(os.path.join(d, "s.sock"))
    yield s
    s.close()
    shutil.rmtree(d, ignore_errors=True)


def _rank(sup: FakeSupervisor, root: Path, umask: int | None = None):
    pre = (lambda: os.umask(umask)) if umask is not None else None
    child = spawn(INIT + REGISTER, {"JITC_SOCKET": sup.path, "JITC_DIR": str(root)},
                  preexec_fn=pre)
    sup.accept()
    sup.expect(Msg.HELLO)
    assert child.stdout.readline().strip() == "ready"
    return child


def _snapshot(sup: FakeSupervisor, directory: str, sid: str, files=(stripe_stem(0, 1),)) -> dict:
    sup.send(Msg.SNAPSHOT, {"id": sid, "dir": directory, "stripes": [0], "files": list(files),
                            "nstripes": 1, "step": 3})
    while True:
        done = sup.expect(Msg.SNAPSHOT_DONE, timeout=15).body
        if done["id"] == sid:
            return done


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def test_snapshot_outside_the_root_is_refused_and_writes_nothing(sup, tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(mode=0o700)
    outside.mkdir(mode=0o700)
    (root / "link").symlink_to(outside)          # a symlink in the root leading out of it
    child = _rank(sup, root)
    try:
        refused = {
            "outside": str(outside / "snap"),
            "dotdot": f"{root}/../outside/snap",
            "dotdot-inside": f"{root}/snap/../../outside/snap",
            "symlink": str(root / "link" / "snap"),
            "symlink-leaf": str(root / "link"),
            "relative": "outside/snap",
            "the-root": str(root),
            "prefix-not-a-parent": f"{root}x/snap",
            "elsewhere": str(tmp_path.parent / f"{tmp_path.name}-elsewhere"),
        }
        for sid, directory in refused.items():
            done = _snapshot(sup, directory, sid)
            assert done["ok"] is False and done["error"], (sid, done)
        assert _files(outside) == [], "the rank wrote outside its root"
        assert not Path(f"{root}x").exists()
        assert not (tmp_path.parent / f"{tmp_path.name}-elsewhere").exists()
        assert _files(root) == ["link"]
        # A command inside the root still works, and the agent is alive and answering.
        done = _snapshot(sup, str(root / "snap-a0-s3-0"), "good")
        assert done["ok"] is True, done
        assert (root / "snap-a0-s3-0" / "stripe-0-of-1.safetensors").is_file()
        sup.send(Msg.QUERY, {})
        assert sup.expect(Msg.STATE).body["completed"] == 3
    finally:
        child.kill()
        child.wait()


def test_a_file_stem_that_is_not_a_plain_name_is_refused(sup, tmp_path: Path) -> None:
    """The caller names the stripe files (layout.py); the agent checks each is one plain
    file name, so no stem can aim a file outside the directory the command named."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(mode=0o700)
    outside.mkdir(mode=0o700)
    child = _rank(sup, root)
    target = root / "snap-a0-s3-0"
    try:
        refused = {
            "slash": ["sub/stripe-0-of-1"], "dotdot": ["../../outside/stripe-0-of-1"],
            "dots": [".."], "empty": [""], "long": ["s" * (MAX_STEM + 1)], "number": [0],
            "missing": None, "two-for-one": ["a", "b"], "none": [],
        }
        for sid, files in refused.items():
            body = {"id": sid, "dir": str(target), "stripes": [0], "nstripes": 1, "step": 3}
            if files is not None:
                body["files"] = files
            sup.send(Msg.SNAPSHOT, body)
            done = sup.expect(Msg.SNAPSHOT_DONE, timeout=15).body
            assert done["id"] == sid and done["ok"] is False, (sid, done)
            assert "files" in done["error"], (sid, done)
        assert _files(outside) == [] and _files(root) == [], "a refused command wrote"
        done = _snapshot(sup, str(target), "told", files=["my-stem"])   # any plain name goes
        assert done["ok"] is True and done["file"] == str(target / "my-stem.safetensors"), done
        assert _files(target) == ["my-stem.done", "my-stem.safetensors"]
    finally:
        child.kill()
        child.wait()


def test_snapshot_without_a_root_is_refused(sup, tmp_path: Path) -> None:
    child = spawn(INIT + REGISTER, {"JITC_SOCKET": sup.path})
    sup.accept()
    sup.expect(Msg.HELLO)
    try:
        assert child.stdout.readline().strip() == "ready"
        done = _snapshot(sup, str(tmp_path / "snap"), "noroot")
        assert done["ok"] is False and "JITC_DIR" in done["error"]
        assert not (tmp_path / "snap").exists()
    finally:
        child.kill()
        child.wait()


def test_snapshot_files_are_private_whatever_the_umask(sup, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    child = _rank(sup, root, umask=0)
    try:
        done = _snapshot(sup, str(root / "snap-x" / "shard-0"), "x")
        assert done["ok"] is True, done
    finally:
        child.kill()
        child.wait()
    for d in (root / "snap-x", root / "snap-x" / "shard-0"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = list((root / "snap-x" / "shard-0").iterdir())
    assert {f.suffix for f in files} == {".safetensors", ".done"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_failure_detail_that_is_not_utf8_still_arrives(sup) -> None:
    """A detail cut mid-character (or bytes from a C library) must not cost the report:
    the receiver drops a record that is not UTF-8, so the shim writes U+FFFD instead."""
    child = spawn(INIT + "lib.jitc_report_failure(b'exception', b'bad \\xff\\xfe x \\xe4\\xb8')\n"
                  "print('sent', flush=True)\ntime.sleep(30)\n", {"JITC_SOCKET": sup.path})
    try:
        sup.accept()
        sup.expect(Msg.HELLO)
        detail = sup.expect(Msg.FAILURE).body["detail"]
        assert detail == "bad \ufffd\ufffd x \ufffd\ufffd", detail
    finally:
        child.kill()
        child.wait()
