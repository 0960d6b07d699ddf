"""A snapshot whose meta record would run code (issue 13, "Found" 1).

The attacker's snapshot: a genuine one written by the shim, its meta blob replaced by a
pickle whose ``__reduce__`` runs a shell command, the step moved beyond ``--steps``, and
everything re-sealed exactly as an attacker would: stripe rewritten with consistent
offsets, CRC32C recomputed in the completion record, manifest republished with jitc's own
``publish``. A checksum is not authentication: every check that only compares sums
passes. What must hold: shim-only resume, the supervisor's CheckFree stage path and
``jitc inspect`` never run the payload; resume refuses the forged snapshot and resumes
from the older genuine one beside it (bitwise equal to a fault-free run); inspect calls it
invalid; the stage rebuild refuses it.
"""
from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jitc.checkfree.layout import StageLayout, write_layout
from jitc.errors import JitcError
from jitc.snapshot import publish
from jitc.snapshot.verify import file_crc32c

BIN = Path(sys.executable).parent
STEPS, FAULT_STEP, FORGED_STEP = 6, 3, 999    # FAULT_STEP: the genuine snapshot's

SCRIPT = """
import sys, torch, jitc
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
opt = torch.optim.Adam(model.parameters(), lr=0.05)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.9 ** i)
session = jitc.protect(model, opt, scheduler=sched, seed=7,
                       periodic_every=int(sys.argv[3]) or None)
print("start", session.start_step, flush=True)
for step in session.steps(int(sys.argv[2])):
    x = torch.randn(8, 4)
    loss = (model(x) - x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
torch.save(model.state_dict(), sys.argv[1])
"""


class _Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def forged_meta(marker: Path) -> bytes:
    return pickle.dumps({"completed": FORGED_STEP, "seed": 0, "extra": {"x": _Payload(marker)},
                         "optim": None, "scheduler": None}, protocol=pickle.HIGHEST_PROTOCOL)


def forge(genuine: Path, target: Path, meta: bytes, step: int) -> Path:
    """Copy a snapshot, put ``meta`` in every stripe and ``step`` everywhere, re-seal."""
    shutil.copytree(genuine, target)
    (target / "manifest.json").unlink(missing_ok=True)
    for stripe in sorted(target.glob("stripe-*.safetensors")):
        data = stripe.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        body = data[8 + n:]
        header["__metadata__"]["step"] = str(step)
        blobs, off = [], 0
        for key, info in header.items():
            if key == "__metadata__":
                continue
            b, e = info["data_offsets"]
            raw = meta if key == "__jitc_meta__" else body[b:e]
            if key == "__jitc_meta__":
                info["shape"] = [len(raw)]
            info["data_offsets"] = [off, off + len(raw)]
            blobs.append(raw)
            off += len(raw)
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)
        stripe.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
        done = stripe.with_suffix(".done")
        rec = json.loads(done.read_text())
        rec.update(step=step, bytes=stripe.stat().st_size, crc32c=file_crc32c(stripe))
        done.write_text(json.dumps(rec) + "\n")
    return publish(target)


def _env(snaps: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITC_") and k != "LD_PRELOAD"}
    lib = subprocess.run([str(BIN / "jitc"), "lib"], capture_output=True, text=True, check=True)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", LD_PRELOAD=lib.stdout.strip(),
               JITC_DIR=str(snaps), **extra)
    return env


def _train(tmp: Path, snaps: Path, out: Path, periodic: int = 0) -> subprocess.CompletedProcess:
    script = tmp / "train.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(out), str(STEPS), str(periodic)],
                          cwd=tmp, env=_env(snaps), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """(tmp, snapshot root holding the shim's own snapshot of step 3, its directory, the
    fault-free run's final weights). A fault-free run with a periodic snapshot at step 3."""
    tmp = tmp_path_factory.mktemp("forged")
    snaps = tmp / "snaps"
    ref = _train(tmp, snaps, tmp / "ref.pt", periodic=FAULT_STEP)
    assert ref.returncode == 0, ref.stderr[-3000:]
    (snap,) = list(snaps.glob("snap-*"))
    assert json.loads((snap / "manifest.json").read_text())["step"] == FAULT_STEP
    return tmp, snaps, snap, torch.load(tmp / "ref.pt", weights_only=True)


def test_shim_only_resume_refuses_the_forged_snapshot_and_falls_back(genuine, tmp_path):
    tmp, snaps0, snap, reference = genuine
    snaps = tmp_path / "snaps"
    shutil.copytree(snaps0, snaps)
    marker = tmp_path / "pwned"
    forge(snap, snaps / f"snap-a9-s{FORGED_STEP}-0", forged_meta(marker), FORGED_STEP)

    proc = _train(tmp_path, snaps, tmp_path / "out.pt")
    assert not marker.exists(), "the forged meta record ran its payload"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"start {FAULT_STEP}" in proc.stdout, proc.stdout
    assert f"snap-a9-s{FORGED_STEP}-0" in proc.stderr and "pickle" in proc.stderr, proc.stderr
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got.keys() == reference.keys()
    for k in got:
        assert torch.equal(got[k].view(torch.uint8), reference[k].view(torch.uint8)), k


def test_inspect_calls_the_forged_snapshot_invalid(genuine, tmp_path):
    _, _, snap, _ = genuine
    marker = tmp_path / "pwned"
    forged = forge(snap, tmp_path / f"snap-a9-s{FORGED_STEP}-0", forged_meta(marker),
                   FORGED_STEP).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITC_")}
    ok = subprocess.run([str(BIN / "jitc"), "inspect", str(snap)], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([str(BIN / "jitc"), "inspect", str(forged)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert not marker.exists()
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "pickle" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_stage_rebuild_refuses_a_forged_neighbour(genuine, tmp_path):
    """The supervisor rebuilds lost stage 2 from stages 1 and 3: stage 1's is forged."""
    from jitc.checkfree.plan import Action
    from jitc.checkfree.layout import any_checkfree_plus
    from jitc.supervisor.planner.methods import plan_stages
    from jitc.supervisor.stages import latest_complete_stages, rebuild_stage
    _, _, snap, _ = genuine
    marker = tmp_path / "pwned"
    root, base = tmp_path / "root", tmp_path / "root" / f"snap-a0-s{FAULT_STEP}-0"
    for s in (0, 2, 3):
        shutil.copytree(snap, base / f"shard-{s}")
    forge(snap, base / "shard-1", forged_meta(marker), FAULT_STEP)
    names = json.loads((base / "shard-0" / "manifest.json").read_text())["tensors"]
    tensors = tuple((n, t["dtype"], tuple(t["shape"])) for n, t in names.items()
                    if n.startswith("model."))
    for s in range(4):
        write_layout(root, StageLayout(s, 4, False, tensors))
    by_shard = {0: {FAULT_STEP: [0]}, 1: {FAULT_STEP: [1]}, 2: {}, 3: {FAULT_STEP: [3]}}
    action = plan_stages(by_shard, {s: 1 for s in range(4)}, any_checkfree_plus(root)).rebuilt[0]
    assert (action.stage, action.action, action.sources) == (2, Action.CHECKFREE_MERGE, (1, 3))
    (base / "shard-2").rename(tmp_path / "lost-stage-2")
    with pytest.raises(JitcError, match="pickle"):
        rebuild_stage(action, base, root, FAULT_STEP, 4)
    assert not marker.exists(), "the forged meta record ran its payload"
    # The fallback search does not take a set of stage snapshots that holds it either.
    shutil.copytree(tmp_path / "lost-stage-2", base / "shard-2")
    assert latest_complete_stages(root, 4) is None
    assert not marker.exists()
