"""A resumed DDP gets the bucket layout DDP rebuilt after the first backward (jitc/ddp_buckets.py).

One process, a gloo group of one: the layout is DDP's own (its GradBuckets' parameters),
compared by parameter name between a run that trained and a fresh DDP given its order."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from jitc import ddp_buckets


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


class Net(nn.Module):
    """Registered in another order than used: the rebuilt layout differs from the first."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32, 4)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())

    def forward(self, x):
        return self.head(self.body(x))


def _ddp(**kw) -> DDP:
    torch.manual_seed(0)
    return DDP(Net(), bucket_cap_mb=0.004, **kw)     # ~4 KB buckets: several of them


def _layout(ddp: DDP) -> list[list[str]]:
    names = {id(p): n for n, p in ddp.module.named_parameters()}
    return [[names[id(p)] for p in b.parameters()] for b in ddp.reducer._get_zeros_like_grad_buckets()]


def _step(ddp: DDP) -> None:
    ddp(torch.randn(8, 16)).square().mean().backward()


def _trained(**kw) -> tuple[list[int], list[list[str]]]:
    """(the recorded order, DDP's layout after its rebuild) of a run from step 0."""
    ddp = _ddp(**kw)
    order = ddp_buckets.BucketOrder(ddp)
    order.start(0)
    _step(ddp)
    order.settle()
    _step(ddp)                     # DDP rebuilds before this forward (static_graph: the next)
    _step(ddp)
    return order.order, _layout(ddp)


def test_a_resumed_ddp_reduces_in_the_rebuilt_layout_and_keeps_it(group):
    order, rebuilt = _trained()
    assert _layout(_ddp()) != rebuilt               # what a plain resumed process would use
    ddp = _ddp()
    resumed = ddp_buckets.BucketOrder(ddp)
    resumed.saved = order
    resumed.start(6)
    assert _layout(ddp) == rebuilt and resumed.order == order
    for _ in range(2):                              # never rebuilt again
        _step(ddp)
        resumed.settle()
        assert _layout(ddp) == rebuilt and resumed.order == order


def test_static_graph_and_a_comm_hook_survive_the_new_reducer(group):
    calls = []

    def hook(state, bucket):
        calls.append(bucket.index())
        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(
            lambda f: f.value()[0])

    order, rebuilt = _trained(static_graph=True)
    assert _layout(_ddp(static_graph=True)) != rebuilt
    ddp = _ddp(static_graph=True)
    ddp.register_comm_hook(None, hook)
    resumed = ddp_buckets.BucketOrder(ddp)
    resumed.saved = order
    resumed.start(3)
    assert _layout(ddp) == rebuilt
    _step(ddp)
    _step(ddp)
    assert _layout(ddp) == rebuilt and sorted(set(calls)) == list(range(len(rebuilt)))
    assert all(p.grad is not None for p in ddp.parameters())


def test_a_snapshot_without_an_order_warns_and_records_this_attempt(group, caplog):
    ddp = _ddp()
    resumed = ddp_buckets.BucketOrder(ddp)
    resumed.saved = [0, 1]                          # not a permutation of the parameters
    with caplog.at_level(logging.WARNING, logger="jitc"):
        resumed.start(4)
    assert "last bits" in caplog.text
    _step(ddp)
    resumed.settle()
    assert sorted(resumed.order) == list(range(len(list(ddp.parameters()))))


@pytest.mark.filterwarnings("ignore:You passed find_unused_parameters=true")
def test_only_a_ddp_that_rebuilds_its_buckets_is_found(group):
    assert ddp_buckets.find(_ddp().module) is None
    assert ddp_buckets.find(_ddp(find_unused_parameters=True)) is None   # never rebuilds
    ddp = _ddp(find_unused_parameters=True, static_graph=True)
    assert ddp_buckets.find(ddp) is ddp


def test_a_ddp_whose_script_fixed_its_layout_before_protect_is_left_alone(group):
    """examples/ddp_train.py rebuilds its buckets at construction (pin_bucket_layout): every
    attempt reduces in that layout, and imposing a ready order would break the equality."""
    ddp = _ddp()
    ddp.reducer._push_all_rebuilt_params()
    assert ddp.reducer._rebuild_buckets()
    ddp._has_rebuilt_buckets = True
    assert ddp_buckets.find(ddp) is None
