"""Recovery beyond the two-rank supervised case: four ranks striping one snapshot, the
shim alone under ``torchrun --max-restarts``, and a corrupted snapshot on disk that must
never be loaded."""
from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import BIN, assert_bitwise_equal, clean_env, supervise, torchrun

pytestmark = pytest.mark.e2e


def test_four_ranks_stripe_the_snapshot_over_three_survivors(tmp_path, reference):
    run = supervise(tmp_path, inject=["crash@rank=1,step=6"], nproc=4, steps=10)
    assert run.code == 0, run.stderr[-4000:]
    roots = [e for e in run.of("failure_detected") if e.get("root_cause")]
    assert [(e["rank"], e["kind"]) for e in roots] == [(1, "crash")]
    writers = {e["rank"] for e in run.of("snapshot_requested")}
    assert writers == {0, 2, 3}, run.of("snapshot_requested")
    done = run.of("snapshot_done")
    assert len(done) == 1 and done[0]["step"] == 6
    resumed = run.of("resumed")
    assert {e["rank"] for e in resumed} == {0, 1, 2, 3}
    assert all(e["step"] == 6 and e["replayed"] <= 1 for e in resumed), resumed
    assert_bitwise_equal(run.weights(), reference(4, 10))


def shim_only(tmp_path, snaps, out, *, inject: str | None, steps: int, max_restarts: int = 3):
    """``LD_PRELOAD=$(jitc lib) JITC_DIR=... torchrun --max-restarts N ...``: no supervisor."""
    lib = subprocess.run([str(BIN / "jitc"), "lib"], capture_output=True, text=True, check=True)
    env = dict(clean_env(), LD_PRELOAD=lib.stdout.strip(), JITC_DIR=str(snaps))
    if inject:
        env["JITC_INJECT"] = inject
    cmd = torchrun(2, steps, out)
    cmd.insert(1, f"--max-restarts={max_restarts}")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def snapshot_steps(snaps) -> dict[int, object]:
    found = {}
    for manifest in snaps.glob("snap-*/manifest.json"):
        found[json.loads(manifest.read_text())["step"]] = manifest.parent
    return found


def test_shim_only_recovers_and_skips_a_corrupted_snapshot(tmp_path, reference):
    snaps, out = tmp_path / "snaps", tmp_path / "out.pt"
    # Two failures, one per attempt: each time the healthy rank writes its own snapshot
    # into JITC_DIR and exits; torchrun restarts both; protect() resumes from the newest.
    proc = shim_only(tmp_path, snaps, out, steps=12,
                     inject="crash@rank=1,step=4;exception@rank=0,step=8,attempt=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_bitwise_equal(torch_load(out), reference(2, 12))
    steps = snapshot_steps(snaps)
    assert set(steps) == {4, 8}, steps

    # A flipped byte in the newest snapshot: `jitc inspect` says invalid and names the
    # file; a restarted job skips it and resumes from the older one, which still ends
    # bitwise equal to the fault-free run.
    newest = steps[8]
    stripe = sorted(newest.glob("stripe-*.safetensors"))[0]
    data = bytearray(stripe.read_bytes())
    data[-5] ^= 0x40
    stripe.write_bytes(bytes(data))
    check = subprocess.run([str(BIN / "jitc"), "inspect", str(newest)], capture_output=True,
                           text=True, env=clean_env(), timeout=120)
    assert check.returncode != 0 and stripe.name in check.stdout + check.stderr, check

    out2 = tmp_path / "out2.pt"
    proc = shim_only(tmp_path, snaps, out2, steps=12, inject=None)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert stripe.name in proc.stderr and "skipping snapshot" in proc.stderr, proc.stderr[-3000:]
    assert_bitwise_equal(torch_load(out2), reference(2, 12))


def torch_load(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)
