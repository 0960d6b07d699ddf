"""Unit tests: root-cause choice, option relations, restart policy, hang timeout."""
from __future__ import annotations

from pathlib import Path

import pytest

from jitc.errors import UsageError
from jitc.supervisor.classify import Failure, root_causes
from jitc.limits import HANG_FLOOR_S, HANG_INITIAL_S, hang_timeout
from jitc.supervisor.options import Options
from jitc.supervisor.policy import RestartPolicy
from jitc.supervisor.process import preload_env


def F(rank, kind, ts, progress=None):
    return Failure(rank=rank, kind=kind, ts=ts, progress=progress)


def test_peer_never_root_cause_and_earliest_primary_wins():
    fs = [F(0, "peer", 1.0), F(2, "exception", 2.0), F(1, "crash", 3.0)]
    assert [f.rank for f in root_causes(fs)] == [2]
    assert root_causes([F(0, "peer", 1.0)]) == []


def test_hard_failure_beats_earlier_hang():
    fs = [F(0, "hang", 1.0, (5, 2, 3)), F(1, "crash", 2.0)]
    assert [f.rank for f in root_causes(fs)] == [1]


def test_hang_blames_least_progress_ties_all():
    fs = [F(0, "hang", 1.0, (5, 2, 3)), F(3, "hang", 1.5, (5, 1, 0)),
          F(1, "hang", 2.0, (5, 1, 0)), F(2, "nccl-hang", 0.5, (6, 0, 0))]
    assert [f.rank for f in root_causes(fs)] == [3, 1]


def test_options_relations(tmp_path):
    base = dict(command=("true",), run_dir=tmp_path / "r", lib=Path("/x"))
    Options(**base)
    with pytest.raises(UsageError):
        Options(**{**base, "command": ()})
    with pytest.raises(UsageError):
        Options(**base, hang_timeout_s=0.1)        # not above two heartbeats
    with pytest.raises(UsageError):
        Options(**base, settle_s=5.0)              # settle > query timeout
    with pytest.raises(UsageError):
        Options(**{**base, "run_dir": tmp_path / "no" / "r"})


def test_derived_hang_timeout():
    assert hang_timeout([]) == hang_timeout([1.0, 1.0]) == HANG_INITIAL_S
    assert hang_timeout([0.1] * 100) == HANG_FLOOR_S
    assert hang_timeout([1.0] * 90 + [30.0] * 10) == 150.0     # nearest-rank p95 of the last 64


def test_policy_and_preload():
    p = RestartPolicy(2)
    assert p.allows_restart(0) and p.allows_restart(1) and not p.allows_restart(2)
    assert preload_env({"LD_PRELOAD": "a.so /lib.so"}, Path("/lib.so")) == "/lib.so:a.so"
    assert preload_env({}, Path("/lib.so")) == "/lib.so"
