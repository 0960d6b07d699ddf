"""The meta record (jitc/snapshot/meta.py): plain data that round-trips exactly, a one-line
error naming where unstorable state is, at protect() time; a pickle is refused unread, and
no byte string makes decode raise anything but CorruptSnapshotError."""
from __future__ import annotations

import collections
import math
import os
import pickle
import random
import struct
import subprocess
import sys

import pytest
import torch

from jitc.errors import CorruptSnapshotError
from jitc.snapshot.meta import MetaError, decode, decode_state, encode


def same(a, b) -> bool:
    """Equal values of the same types, floats bit for bit, tensors bitwise."""
    if type(a) is float:
        return type(b) is float and struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and _raw(a) == _raw(b))
    if type(a) in (list, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return (type(b) is dict and list(a) == list(b)
                and all(same(k1, k2) and same(a[k1], b[k2]) for k1, k2 in zip(a, b)))
    return type(a) is type(b) and a == b


def _raw(t: torch.Tensor) -> list[int]:
    return t.contiguous().reshape(-1).view(torch.uint8).tolist()


VALUES = [None, True, False, 0, -1, 2**100, -(2**70), 1.5, -0.0, 5e-324, math.nan, math.inf,
          -math.inf, "", "x\ud800é\u2028\x00", b"", b"\x00\xff" * 40, [], (), (1, (2, [3.5])),
          [[[]]], {}, {1: "a", "b": 2, (1, 2): 3, None: 4, 2.5: 5, True: 6, -7: [8]},
          {"$t": "tuple", "v": []}, {"$t": {"$t": 1}}, {"a": {"$t": "bytes", "v": "AA=="}},
          torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.tensor(3, dtype=torch.int64),
          torch.empty(0, 4), torch.randn(5).to(torch.bfloat16), torch.tensor([True, False]),
          torch.arange(10, dtype=torch.int16)[::2], torch.get_rng_state()]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_round_trip_is_exact(value):
    blob = encode({"x": value, "after": 1})
    assert blob.isascii()
    out = decode(blob)
    assert same({"x": value, "after": 1}, out), (value, out)


def test_mappings_come_back_as_dicts_and_numpy_scalars_as_their_values():
    np = pytest.importorskip("numpy")
    out = decode(encode({"o": collections.OrderedDict(b=1, a=2), "f": np.float64(0.1),
                         "i": np.int64(3), "s": torch.Size([2, 3])}))
    assert same(out, {"o": {"b": 1, "a": 2}, "f": 0.1, "i": 3, "s": (2, 3)})


def test_schedulers_and_optimizers_state_round_trips():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=0.1)
    scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 ** i),
              torch.optim.lr_scheduler.StepLR(opt, 3),
              torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10),
              torch.optim.lr_scheduler.ReduceLROnPlateau(opt),        # best = inf
              torch.optim.lr_scheduler.OneCycleLR(opt, 1.0, total_steps=10)]
    for s in scheds:
        state = {"scheduler": s.state_dict(),
                 "groups": [{k: v for k, v in g.items() if k != "params"}
                            for g in opt.param_groups]}
        assert same(state, decode(encode(state))), type(s).__name__


@pytest.mark.parametrize("state, where, what", [
    ({"scheduler": {"lr_lambdas": [lambda i: i]}}, "meta.scheduler.lr_lambdas[0]", "a function"),
    ({"extra": {"my-loader": {"sampler": object()}}}, "meta.extra['my-loader'].sampler",
     "a builtins.object"),
    ({"optim": {"per_param": {0: {"fn": len}}}}, "meta.optim.per_param[0].fn", "a function"),
    ({"x": [1, (2, {3: torch.zeros(1, dtype=torch.complex64)})]}, "meta.x[1][1][3]",
     "complex64"),
    ({"x": {1, 2}}, "meta.x", "a builtins.set"),
    ({"x": collections.namedtuple("P", "a")(1)}, "meta.x", "a tuple subclass"),
])
def test_unstorable_state_is_named_in_one_line(state, where, what):
    with pytest.raises(MetaError) as info:
        encode(state)
    msg = str(info.value)
    assert msg.startswith(f"{where}: cannot store ") and what in msg and "\n" not in msg


def test_state_that_contains_itself_is_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(MetaError, match="contains itself"):
        encode({"x": loop})


def test_a_pickle_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for proto in (2, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(CorruptSnapshotError, match="pickle.*never unpickled"):
            decode(pickle.dumps({"x": Payload()}, protocol=proto))
    with pytest.raises(CorruptSnapshotError, match="not jitc-meta/1"):
        decode(pickle.dumps({"x": 1}, protocol=0))          # protocol 0 is ASCII
    assert not marker.exists()
    assert decode_state(b"") == {}
    with pytest.raises(CorruptSnapshotError, match="not a dict"):
        decode_state(encode([1]))


@pytest.mark.parametrize("blob", [
    b"{}", b"[]", b'{"format":"jitc-meta/1"}', b'{"format":"jitc-meta/2","state":1}',
    b'{"format":"jitc-meta/1","state":NaN}', b'{"format":"jitc-meta/1","state":1,"x":2}',
    b'{"format":"jitc-meta/1","state":{"$t":"tensor","dtype":"F32","shape":[2],"v":"AAAA"}}',
    b'{"format":"jitc-meta/1","state":{"$t":"tensor","dtype":["F32"],"shape":[1],"v":"AAAAAA=="}}',
    b'{"format":"jitc-meta/1","state":{"$t":"tensor","dtype":"F32","shape":[0,1e999],"v":""}}',
    b'{"format":"jitc-meta/1","state":{"$t":"dict","items":[[[1],2]]}}',
    b'{"format":"jitc-meta/1","state":{"$t":"float","v":["nan"]}}',
    b'{"format":"jitc-meta/1","state":{"$t":"bytes","v":"!!"}}',
    b'{"format":"jitc-meta/1","state":{"$t":"eval","v":"1"}}',
    b'{"format":"jitc-meta/1","state":' + b"[" * 100000 + b"]" * 100000 + b"}",
    b"\xff\xfe",
    '{"format":"jitc-meta/1","state":"\ud800"}'.encode("utf-8", "surrogatepass"),
])
def test_malformed_records_are_corrupt_never_another_error(blob):
    with pytest.raises(CorruptSnapshotError):
        decode(blob)


def test_random_mutations_decode_or_are_corrupt():
    state = {"completed": 5, "optim": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}],
                                       "per_param": {0: {"step": 3}}},
             "t": torch.arange(4, dtype=torch.float32), "b": b"\x01\x02", "n": -math.inf}
    blob = encode(state)
    rng = random.Random(0)
    outcomes = collections.Counter()
    for _ in range(3000):
        data = bytearray(blob)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decode(bytes(data))
            outcomes["decoded"] += 1
        except CorruptSnapshotError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000 and sum(outcomes.values()) == 3000


SCRIPT = """
import sys, torch, jitc
class Warmup:                       # a callable object: LambdaLR stores its __dict__
    def __init__(self):
        self.fn = lambda i: min(1.0, (i + 1) / 10)
    def __call__(self, i):
        return self.fn(i)
model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.LambdaLR(opt, Warmup())
try:
    jitc.protect(model, opt, scheduler=sched)
except jitc.errors.JitcError as e:
    print("refused:", e)
    sys.exit(3)
"""


def test_protect_refuses_unstorable_state_when_it_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITC_") and k != "LD_PRELOAD"}
    env.update(OMP_NUM_THREADS="1", JITC_DIR=str(tmp_path / "snaps"))
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "refused: meta.scheduler.lr_lambdas[0].fn: cannot store a function" in p.stdout


def test_a_frozen_value_is_encoded_once_and_decodes_in_place():
    from jitc.snapshot.meta import Frozen, MetaError, decode_state, encode
    record = {"tensors": {f"model.{i}.weight": {"global_shape": [8, 4], "placements": ["R", "S(0)"],
                                                 "offset": [4 * (i % 2), 0], "local_shape": [4, 4]}
                          for i in range(100)}, "mesh_shape": [2, 2], "coordinate": [1, 0]}
    frozen = Frozen("sharding", record)
    state = {"completed": 7, "optim": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
             "x": float("nan")}
    blob = encode(state, frozen=frozen)
    got = decode_state(blob)
    assert got["sharding"] == record and got["completed"] == 7
    assert got["optim"]["param_groups"][0]["betas"] == (0.9, 0.99) and got["x"] != got["x"]
    assert blob == encode({**state, "sharding": record})     # the same bytes as encoding it all
    for bad in ({}, {"sharding": 1}, {1: 2}):
        with pytest.raises(MetaError):
            encode(bad, frozen=frozen)
    with pytest.raises(MetaError):
        Frozen("f", {"fn": print})                            # refused when frozen, once
