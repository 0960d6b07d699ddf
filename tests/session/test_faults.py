"""Fault specs: the grammar of DESIGN.md, one-line errors, and who fires what."""
import pytest

from jitc.errors import InjectedFault, UsageError
from jitc.faults import FaultSpec, Injector, join_specs, parse_spec, parse_specs


def test_full_spec():
    assert parse_spec("hang@rank=3,step=7,phase=backward,attempt=2") == FaultSpec("hang", 3, 7, "backward", 2)


def test_defaults_and_round_trip():
    specs = parse_specs(["crash@rank=1,step=5", "segv@step=2,rank=0;gil-hang@rank=0,step=9,phase=optimizer"])
    assert specs[0] == FaultSpec("crash", 1, 5, "forward", 0)
    assert [s.kind for s in specs] == ["crash", "segv", "gil-hang"]
    assert parse_specs([join_specs(specs)]) == specs


@pytest.mark.parametrize("bad, reason", [
    ("crash", "expected"), ("boom@rank=1,step=1", "unknown kind"), ("crash@rank=1", "missing step"),
    ("crash@rank=one,step=1", "integer"), ("crash@rank=1,step=-1", ">= 0"),
    ("crash@rank=1,step=1,phase=sideways", "phase"), ("crash@rank=1,step=1,rank=2", "twice"),
    ("crash@rank=1,step=1,when=now", "unknown field"), ("crash@rank=1,step", "key=value"),
])
def test_bad_specs_are_one_line_usage_errors(bad, reason):
    with pytest.raises(UsageError) as info:
        parse_specs([bad])
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_injector_fires_only_its_rank_step_phase_and_attempt():
    announced = []
    specs = parse_specs(["exception@rank=1,step=3,phase=backward", "exception@rank=1,step=3,attempt=1",
                         "exception@rank=0,step=3,phase=backward"])
    injector = Injector(specs, rank=1, attempt=0, announce=announced.append)
    injector.maybe_fire(3, "forward")        # attempt-1 spec: not this attempt
    injector.maybe_fire(2, "backward")
    assert announced == []
    with pytest.raises(InjectedFault):
        injector.maybe_fire(3, "backward")
    assert announced == [specs[0]]
    injector.maybe_fire(3, "backward")        # fires once
    assert len(announced) == 1 and not injector
