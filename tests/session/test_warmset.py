"""The module list a rank leaves for the next attempt's standby (jitc/warmset.py)."""
from __future__ import annotations

import json
import sys

from jitc import warmset


def test_local_rank_zero_records_its_modules_under_the_supervisor(tmp_path, monkeypatch):
    monkeypatch.setenv("JITC_RUN_DIR", str(tmp_path))
    warmset.record(local_rank=1)
    assert not (tmp_path / warmset.FILE).exists()       # one writer per node
    warmset.record(local_rank=0)
    names = json.loads((tmp_path / warmset.FILE).read_text())
    assert "json" in names and "jitc.warmset" in names and "__main__" not in names
    assert set(names) <= set(sys.modules) and names == sorted(names)
    assert [p.name for p in tmp_path.iterdir()] == [warmset.FILE]   # no temporary left


def test_without_a_supervisor_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("JITC_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    warmset.record(local_rank=0)
    assert list(tmp_path.iterdir()) == []
