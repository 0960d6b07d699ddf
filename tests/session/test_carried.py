"""Carried values (jitc/carried.py) and the per-rank slots they are kept in
(jitc/rank_state.py): round trips, torn slots, which record a resume takes, and the
replica check of extra_state."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

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


def test_a_fresh_run_empties_the_slots_a_resumed_one_keeps_the_other(tmp_path):
    store_with(tmp_path, 0, (4, False, {"a": 4}), (5, False, {"a": 5}))
    resumed = rank_state.RankStore(tmp_path, 0)
    resumed.write(5, rank_state.record(0, 0, 5, False, {"a": meta.encode(55)}, {}, {}))
    assert sorted(r["completed"] for r in resumed.read()) == [4, 5]
    fresh = rank_state.RankStore(tmp_path, 0, fresh=True)
    fresh.write(0, rank_state.record(0, 0, 0, False, {}, {}, {}))
    assert [r["completed"] for r in fresh.read()] == [0]


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


SESSION = """
import sys, torch, jitc
from jitc import rank_state
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
session = jitc.protect(model, opt, seed=1)
try:
    session.carry("bad", lambda: {"f": print})
except jitc.errors.JitcError as e:
    print("refused:", e)
n = 0
assert session.carry("n", lambda: n) == 0          # a fresh run: get()'s value
for step in session.steps(3):
    model(torch.ones(2)).sum().backward(); opt.step()
    n += 1
records = rank_state.RankStore(sys.argv[1], 0).read()
print(sorted((r["completed"], r["provisional"], r["values"]["n"]) for r in records))
"""


def test_a_session_refuses_code_and_keeps_each_step_s_value(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITC_") and k != "LD_PRELOAD"}
    env.update(OMP_NUM_THREADS="1", JITC_DIR=str(tmp_path / "snaps"))
    p = subprocess.run([sys.executable, "-c", SESSION, str(tmp_path / "snaps")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "refused: session.carry('bad').f: cannot store a function" in p.stdout, p.stdout
    # Step 2 began with n == 2 (final); before step 2's optimizer step n was still 2, the
    # provisional record for step 3 (n becomes 3 after it, at the boundary never reached).
    assert p.stdout.strip().splitlines()[-1] == "[(2, False, 2), (3, True, 2)]", p.stdout


FULL_DISK = """
import os, sys, torch, jitc
from jitc import rank_state
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
session = jitc.protect(model, opt, seed=1)
def full(self, completed, blob):
    raise OSError(28, "No space left on device")
rank_state.RankStore.write = full
n = session.carry("n", lambda: 0)
for step in session.steps(3):
    model(torch.ones(2)).sum().backward(); opt.step()
print("finished", step)
"""


def test_a_full_disk_warns_once_and_training_goes_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITC_") and k != "LD_PRELOAD"}
    env.update(OMP_NUM_THREADS="1", JITC_DIR=str(tmp_path / "snaps"))
    p = subprocess.run([sys.executable, "-c", FULL_DISK], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "finished 2" in p.stdout, p.stdout + p.stderr
    assert p.stderr.count("cannot keep carried values") == 1, p.stderr
