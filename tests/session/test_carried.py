"""Carried values (jitc/carried.py) and the per-rank slots they are kept in
(jitc/rank_state.py): round trips, torn slots, which record a resume takes, and the
replica check of extra_state."""
from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

from jitc import carried, rank_state
from jitc.snapshot import meta


def test_values_round_trip_with_their_devices():
    value = {"batch": (torch.arange(6).view(2, 3), torch.ones(2)), "best": 3.25, "n": [1, 2]}
    devices: list[str] = []
    cpu = carried.to_cpu(value, devices)
    assert devices == ["cpu", "cpu"]
    back = carried.to_devices(cpu, iter(devices))
    assert torch.equal(back["batch"][0], value["batch"][0]) and back["best"] == 3.25
    assert type(back["batch"]) is tuple


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_tensor_is_copied_at_the_capture_and_comes_back_on_its_device():
    t = torch.arange(4, device="cuda")
    blobs, devices = carried.Captures(meta.encode).capture({"x": lambda: t})
    assert devices == {"x": ["cuda:0"]}
    t.add_(1)                                  # changed after the capture: not in the record
    back = carried.restore({"x": meta.decode(blobs["x"])}, devices)["x"]
    assert back.device.type == "cuda" and back.tolist() == [0, 1, 2, 3]


def store_with(tmp_path, rank, *records):
    store = rank_state.RankStore(tmp_path, rank)
    for completed, provisional, values in records:
        blobs = {k: meta.encode(v) for k, v in values.items()}
        store.write(completed, rank_state.record(rank, 0, completed, provisional, blobs, {}, {}))
    return store


def test_slots_are_private_and_keep_the_last_two_steps(tmp_path):
    store = store_with(tmp_path, 1, (4, False, {"a": 4}), (5, False, {"a": 5}),
                       (6, True, {"a": 6}))
    assert sorted((r["completed"], r["values"]["a"]) for r in store.read()) == [(5, 5), (6, 6)]
    for p in store.paths:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.dir).st_mode) == 0o700


def test_a_torn_slot_is_skipped(tmp_path):
    store = store_with(tmp_path, 0, (4, False, {"a": 4}), (5, False, {"a": 5}))
    with open(store.paths[1], "r+b") as f:    # step 5's slot, cut mid-record
        f.truncate(10)
    assert [r["completed"] for r in store.read()] == [4]


def test_choose_takes_the_resume_step_else_the_newest_older_with_a_warning(caplog):
    records = [{"completed": 5, "values": {"a": 5}}, {"completed": 6, "values": {"a": 6}}]
    assert rank_state.choose(records, 6, 0)["values"] == {"a": 6}
    with caplog.at_level(logging.WARNING, "jitc"):
        assert rank_state.choose(records, 7, 0)["values"] == {"a": 6}
        assert rank_state.choose(records, 4, 0) is None
    assert "using those of step 6" in caplog.text and "ignored" in caplog.text


def test_replicas_whose_extra_state_differed_are_named(tmp_path):
    for rank, digest in ((0, "aa"), (1, "bb"), (2, "aa")):
        rec = {"completed": 3, "shard": 0, "extra": {"ema": digest, "sched": "cc"}}
        rank_state.write_resumed(tmp_path, rank, 1, rec)
    assert rank_state.replica_mismatch(tmp_path, 1, 3, 0) == {"ema": [0, 1, 2]}
    assert rank_state.replica_mismatch(tmp_path, 2, 3, 0) == {}     # another attempt's
    assert rank_state.replica_mismatch(tmp_path, 1, 4, 0) == {}
    assert not [p for p in (tmp_path / rank_state.SUBDIR).iterdir() if p.name.endswith(".tmp")]


def test_a_record_holds_no_code():
    with pytest.raises(meta.MetaError, match="function"):
        carried.Captures(meta.encode).capture({"f": lambda: (lambda: 1)})


def test_an_unchanged_batch_is_encoded_once_a_changed_one_again():
    calls = []
    captures = carried.Captures(lambda v: calls.append(v) or meta.encode(v))
    x, y = torch.zeros(2, 3), torch.ones(2)
    get = {"batch": lambda: (x, y), "best": lambda: 1.5}
    first = captures.capture(get)
    assert captures.capture(get) == first and len(calls) == 3    # batch once, best twice
    x.add_(1)                                                     # modified in place
    assert captures.capture(get) != first and len(calls) == 5
    y = torch.ones(2)                                             # a new tensor, equal values
    captures.capture(get)
    assert len(calls) == 7
