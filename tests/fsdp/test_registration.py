"""Registration of FSDP2/HSDP state, without the supervisor: 4 gloo CPU ranks under
``torchrun`` run tests/fsdp/fsdp_rank.py (mesh (2, 2), a model with uneven shards) and
report what the native engine wrote from their registries; plus the resume checks of the
sharding record (jitc/sharding.py), which need no ranks."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jitc import sharding
from jitc.errors import CorruptSnapshotError

from ..e2e.conftest import BIN, clean_env

RANK = Path(__file__).with_name("fsdp_rank.py")
SHARDED = ["model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight"] + [
    f"optim.{i}.{k}" for i in range(4) for k in ("exp_avg", "exp_avg_sq")]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("fsdp-ranks")
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "4",
           "--monitor-interval", "0.1", str(RANK), str(out)]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(4)]


def test_every_rank_registers_its_shard_and_its_copy_group(ranks):
    for f in ranks:
        assert f["coordinate"] == [f["rank"] // 2, f["rank"] % 2]
        assert (f["shard"], f["num_shards"], f["pipeline"]) == (f["rank"] % 2, 2, False)
        assert "pipeline + FSDP is not supported" in f["pipeline_refused"]


def test_registered_bytes_are_the_live_local_shards_after_training(ranks):
    for f in ranks:
        assert f["names"] == f["live_names"]                 # params, buffer, Adam state
        assert all(f["bitwise"].values()) and len(f["bitwise"]) == len(f["live_names"])
        assert f["trained"] and all(f["trained"].values())   # not the initial weights
        assert f["adam_step"] == 3.0


def test_sharding_record_describes_each_dtensor_by_torchs_layout(ranks):
    for f in ranks:
        assert f["record"] == {"mesh_shape": [2, 2], "mesh_dim_names": ["replicate", "shard"],
                               "coordinate": f["coordinate"], "shard": f["rank"] % 2,
                               "num_shards": 2}
        assert f["record_names"] == SHARDED                  # the plain buffer is not in it
        assert set(f["slices"]) == set(SHARDED) and all(f["slices"].values())
        # (3, 6) over two shards: torch.chunk gives rows 0-1 and row 2.
        shard = f["rank"] % 2
        assert f["entry"] == {"global_shape": [3, 6], "placements": ["R", "S(0)"],
                              "offset": [2 * shard, 0], "local_shape": [2 - shard, 6]}


def test_optimizer_state_restored_into_a_fresh_model_is_dtensor_and_trains_alike(ranks):
    for f in ranks:
        assert f["restored_types"] == {"exp_avg": "DTensor", "exp_avg_sq": "DTensor",
                                       "step": "Tensor"}
        assert f["after_restore_equal"]


def test_a_flat_mesh_is_shards_without_copies_and_a_misordered_mesh_is_refused(ranks):
    for f in ranks:
        assert f["flat"] == [f["rank"], 4, 1, [4]]
        # Ranks [[0, 2], [1, 3]]: rank 1 holds shard 0 of copy 1, where jitc expects rank 2.
        if f["rank"] in (1, 2):
            assert "put the replicate dimension first" in f["misordered"]
            assert "\n" not in f["misordered"]
        else:
            assert f["misordered"] is None


def _record(shard=0, local=(2, 6)):
    return {"mesh_shape": [2, 2], "mesh_dim_names": ["replicate", "shard"],
            "coordinate": [1, shard], "shard": shard, "num_shards": 2,
            "tensors": {"model.w": {"global_shape": [3, 6], "placements": ["R", "S(0)"],
                                    "offset": [2 * shard, 0], "local_shape": list(local)}}}


@pytest.mark.parametrize("saved, words", [
    (_record(shard=1), "shard 1, this rank has 0"),
    ({**_record(), "mesh_shape": [1, 4]}, "mesh_shape [1, 4], this rank has [2, 2]"),
    (_record(local=(1, 6)), "model.w: snapshot's local_shape [1, 6], this rank's [2, 6]"),
    ({**_record(), "tensors": {}}, "model.w is sharded here, not in the snapshot"),
    (None, "snapshot has no sharding record"),
])
def test_a_snapshot_of_another_shard_or_mesh_is_refused_in_one_line(saved, words):
    with pytest.raises(CorruptSnapshotError, match=re.escape(words)) as e:
        sharding.check(saved, _record(), Path("snap"))
    assert "\n" not in str(e.value)


def test_a_sharded_snapshot_is_refused_by_a_plain_model():
    with pytest.raises(CorruptSnapshotError, match="this model is not sharded"):
        sharding.check(_record(), None, Path("snap"))
    sharding.check(None, None, Path("snap"))
    sharding.check(_record(), _record(), Path("snap"))
