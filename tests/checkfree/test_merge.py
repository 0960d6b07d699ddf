import math

import pytest
import torch

import llama_tiny as L
from jitc.checkfree import merge_weights, rebuild_edge_stage, rebuild_stage
from jitc.errors import RecoveryError


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_weighted_average_matches_hand_computed_values():
    prev = {"layers.0.w": t(1.0, 2.0), "layers.0.b": t(-4.0)}
    nxt = {"layers.0.w": t(5.0, 10.0), "layers.0.b": t(8.0)}
    out = rebuild_stage(prev, nxt, 3.0, 1.0)
    # (3*[1,2] + 1*[5,10]) / 4 = [2, 4];  (3*-4 + 8) / 4 = -1
    assert torch.equal(out["layers.0.w"], t(2.0, 4.0))
    assert torch.equal(out["layers.0.b"], t(-1.0))
    assert list(out) == ["layers.0.w", "layers.0.b"]


def test_weights_are_not_a_plain_average():
    prev, nxt = {"w": t(0.0)}, {"w": t(1.0)}
    assert rebuild_stage(prev, nxt, 1.0, 9.0)["w"].item() == pytest.approx(0.9)
    assert merge_weights(2.0, 6.0) == (0.25, 0.75)


def test_neighbours_untouched_and_result_is_a_copy():
    prev, nxt = {"w": t(1.0, 1.0)}, {"w": t(3.0, 3.0)}
    out = rebuild_stage(prev, nxt, 1.0, 1.0)
    out["w"].add_(100)
    assert torch.equal(prev["w"], t(1.0, 1.0)) and torch.equal(nxt["w"], t(3.0, 3.0))


def test_keys_matched_by_position_across_stage_offsets():
    # Stages cut from one model keeping absolute layer indices: 2,3 | 4,5 (lost) | 6,7.
    prev = {"layers.2.w": t(0.0), "layers.3.w": t(10.0)}
    nxt = {"layers.6.w": t(4.0), "layers.7.w": t(20.0)}
    out = rebuild_stage(prev, nxt, 1.0, 1.0, names=["layers.4.w", "layers.5.w"])
    assert list(out) == ["layers.4.w", "layers.5.w"]
    assert torch.equal(out["layers.4.w"], t(2.0)) and torch.equal(out["layers.5.w"], t(15.0))
    # Without names the result takes the previous stage's (stage-local) names.
    assert list(rebuild_stage(prev, nxt, 1.0, 1.0)) == ["layers.2.w", "layers.3.w"]


@pytest.mark.parametrize("nxt, what", [
    ({"layers.0.w": torch.zeros(3)}, "shape"),
    ({"layers.0.w": torch.zeros(2, dtype=torch.float64)}, "dtype"),
    ({"layers.0.v": torch.zeros(2)}, "layout"),
    ({"layers.0.w": torch.zeros(2), "layers.1.w": torch.zeros(2)}, "count"),
])
def test_structurally_different_stages_are_an_error(nxt, what):
    with pytest.raises(RecoveryError, match="not alike"):
        rebuild_stage({"layers.0.w": torch.zeros(2)}, nxt, 1.0, 1.0)


def test_real_stages_attention_vs_mlp_mismatch_is_detected():
    cfg = L.Config(layers_per_stage=1)
    a = L.Stage(cfg).state_dict()
    b = L.Stage(L.Config(layers_per_stage=2)).state_dict()
    with pytest.raises(RecoveryError):
        rebuild_stage(a, b, 1.0, 1.0)


def test_edge_layers_skipped_and_result_loads_into_the_lost_stage():
    cfg = L.Config()
    s0 = L.Stage(cfg, embed=True).init_weights(0, 0)
    s2 = L.Stage(cfg).init_weights(0, 2)
    lost = L.Stage(cfg).init_weights(99, 1)
    with pytest.raises(RecoveryError):
        rebuild_stage(s0.state_dict(), s2.state_dict(), 1.0, 1.0)   # embedding only on one side
    new = rebuild_stage(s0.state_dict(), s2.state_dict(), 2.0, 1.0, skip=L.Stage.EDGE_PREFIXES)
    lost.load_state_dict(new, strict=True)
    k = "layers.0.attn.wq.weight"
    want = (2 * s0.state_dict()[k].double() + s2.state_dict()[k].double()) / 3
    assert torch.allclose(lost.state_dict()[k].double(), want, atol=1e-6)


def test_norm_edge_cases():
    assert merge_weights(0.0, 0.0) == (0.5, 0.5)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(RecoveryError):
            merge_weights(bad, 1.0)


def test_integer_entries_taken_from_previous_stage():
    prev = {"w": t(1.0), "count": torch.tensor(7)}
    nxt = {"w": t(3.0), "count": torch.tensor(9)}
    out = rebuild_stage(prev, nxt, 1.0, 1.0)
    assert out["count"].item() == 7 and out["w"].item() == 2.0


def test_edge_stage_is_a_copy_of_its_neighbour():
    nb = {"layers.0.w": t(1.0, 2.0), "embed.weight": t(3.0)}
    out = rebuild_edge_stage(nb)
    assert list(out) == list(nb) and all(torch.equal(out[k], nb[k]) for k in nb)
    out["layers.0.w"].zero_()
    assert torch.equal(nb["layers.0.w"], t(1.0, 2.0))
    assert list(rebuild_edge_stage(nb, skip=("embed.",), names=["layers.9.w"])) == ["layers.9.w"]
