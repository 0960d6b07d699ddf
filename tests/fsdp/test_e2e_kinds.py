"""The fault kinds test_e2e.py leaves out, on HSDP mesh (2, 2): segv, exit and gil-hang.

Every kind ``--inject`` can fire without a GPU (the armed CUDA/NCCL kinds need the
interposer and a device): crash, exception and hang are chained in test_e2e.py; here the
others, each on a rank of either replica group (group = rank // 2), chained over attempts
so that each fault costs one restart, not one job. Each run ends bitwise equal to the
fault-free HSDP run, every attempt blamed on the right rank and kind, resumed by all four
ranks from a JIT snapshot of each shard having replayed at most one step.
"""
from __future__ import annotations

import pytest

from .conftest import assert_bitwise_equal, run_chain

pytestmark = pytest.mark.e2e
# (kind, rank, step, phase, step of the JIT snapshot). A fault in the optimizer phase comes
# after the step's collectives: the others finish that step, the snapshot is of the next.
SEGV_EXIT = [("segv", 1, 3, "backward", 3), ("exit", 2, 6, "optimizer", 7)]
GIL_HANG_AND_MIRRORS = [("gil-hang", 0, 2, "forward", 2), ("segv", 3, 4, "optimizer", 5),
                        ("exit", 0, 7, "forward", 7), ("gil-hang", 3, 9, "backward", 9)]


def test_segv_in_group_0_and_exit_in_group_1_resume_bitwise(tmp_path, reference):
    run = run_chain(tmp_path, "segv-exit", SEGV_EXIT)
    assert_bitwise_equal(run.state(), reference(4))


@pytest.mark.slow    # two hang timeouts and five attempts
def test_gil_hang_on_either_group_and_segv_exit_mirrored_resume_bitwise(tmp_path, reference):
    run = run_chain(tmp_path, "gil-hang", GIL_HANG_AND_MIRRORS)
    assert_bitwise_equal(run.state(), reference(4))
