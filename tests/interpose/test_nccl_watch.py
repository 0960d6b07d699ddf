"""NCCL hang detection: a collective whose completion event never fires is reported as
nccl-hang, naming the operation, after the hang timeout; one that completes is not."""
from __future__ import annotations

import pytest

from .conftest import run_scenario

TIMEOUT = "0.4"   # JITC_HANG_TIMEOUT, seconds


@pytest.mark.parametrize("mode", ["plain", "group"])
def test_collective_that_never_completes_is_a_hang(build, supervisor, mode):
    r = run_scenario(build, "nccl_hang", mode, "1.5", supervisor=supervisor,
                     env={"STUB_NCCL_NEVER_COMPLETE": "1", "JITC_HANG_TIMEOUT": TIMEOUT})
    assert r.returncode == 0, r.stderr
    assert r.values["rc"] == "0"
    assert r.values["recorded"] == "1"          # one completion event, recorded for real
    if mode == "group":
        # Inside a group the operation is only launched at ncclGroupEnd: no event before.
        assert r.values["recorded_in_group"] == "0"
    failure = supervisor.wait_failure(5, kind="nccl-hang")
    assert failure is not None, supervisor.failures()
    assert failure["error"] == "ncclAllReduce"
    assert "not complete after" in failure["detail"]
    # Reported once, not once per watchdog tick.
    assert len([f for f in supervisor.failures() if f["kind"] == "nccl-hang"]) == 1


def test_collective_that_completes_is_not_a_hang(build, supervisor):
    r = run_scenario(build, "nccl_hang", "plain", "1.2", supervisor=supervisor,
                     env={"JITC_HANG_TIMEOUT": TIMEOUT})
    assert r.returncode == 0, r.stderr
    assert r.values["recorded"] == "1"
    # The watchdog did query the event (the stub counts every call that reached it).
    assert int(r.values["event_queries"]) >= 1
    assert supervisor.wait_failure(0.2) is None, supervisor.failures()
