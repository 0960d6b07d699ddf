"""Shim-only mode says where a run starts (issue 14, item 2): one stderr line from local
rank 0, ``jitc:`` prefix — resumed from which snapshot, or starting at step 0 and which
candidates were rejected and why. A first start with nothing in JITC_DIR says nothing."""
from __future__ import annotations

from pathlib import Path

from jitc import resume


def test_no_usable_snapshot_names_each_rejected_candidate(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "snaps"
    bad = root / "snap-a0-s5-0"
    bad.mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    (bad / "manifest.json").write_text("{not json")
    monkeypatch.setenv("JITC_DIR", str(root))
    monkeypatch.delenv("JITC_RESUME", raising=False)
    rejected: list = []
    assert resume.choose(False, rejected=rejected) == (None, None)
    assert [d for d, _ in rejected] == [bad]
    resume._say_where(None, None, rejected, attempt=1)
    out, err = capsys.readouterr()
    assert out == ""
    lines = [x for x in err.splitlines() if x.startswith("jitc: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"jitc: no usable snapshot in {root}: starting at step 0 "
                               "(rejected: snap-a0-s5-0: "), lines
    assert rejected[0][1] in lines[0]


def test_a_restart_with_nothing_written_says_so(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("JITC_DIR", str(tmp_path))
    resume._say_where(None, None, [], attempt=1)
    assert capsys.readouterr().err == (f"jitc: no usable snapshot in {tmp_path}: starting at "
                                       "step 0 (none was written)\n")


def test_a_first_start_says_nothing(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("JITC_DIR", str(tmp_path))
    resume._say_where(None, None, [], attempt=0)
    assert capsys.readouterr() == ("", "")
