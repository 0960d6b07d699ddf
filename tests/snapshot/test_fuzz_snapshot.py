"""Fuzzing a valid snapshot (issue 13, "What to build" 6): every mutation is either refused
(CorruptSnapshotError from the loader, exit 1 from ``jitc inspect``) or loads bitwise the
original state. Never another exception, never other data.

One snapshot written by the shim: two stripes, every dtype class, a 0-d, an empty and a
split tensor, a meta record. The mutations, seeded (``JITC_FUZZ_SEED``, default 0):

- every byte of ``manifest.json``, XORed with a random non-zero byte: as it is, and
  re-sealed (digest recomputed when the result is still a JSON object);
- every byte of each stripe's header (length prefix, JSON, padding): as it is, and
  re-sealed (the file's CRC32C recomputed into the manifest, digest too): then the
  header parser and the checks against the index are what stands in the way;
- a random sample of data bytes (tensors and meta blob), as they are.

The counts are printed (run with ``-s``) and written to ``$JITC_FUZZ_REPORT`` when set.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import time
from collections import Counter
from pathlib import Path

import pytest

from ._state import make_state_dict
from .conftest import bitwise_equal, expected_tensors, reseal

from jitc.errors import CorruptSnapshotError
from jitc.snapshot import inspect_main, latest_complete, load, publish
from jitc.snapshot.verify import file_crc32c

SEED = int(os.environ.get("JITC_FUZZ_SEED", "0"))
DATA_SAMPLE = 300          # data bytes mutated (of ~8 KB)
FALLBACK_EVERY = 40        # every n-th mutation also goes through the resume search


class Fuzz:
    def __init__(self, root: Path, snap: Path, older: Path):
        self.root, self.snap, self.older = root, snap, older
        self.manifest = snap / "manifest.json"
        self.pristine = {p.name: p.read_bytes() for p in snap.iterdir()}
        self.want = expected_tensors(1)
        self.counts: Counter = Counter()
        self.failures: list[str] = []
        self.n = 0

    def restore(self) -> None:
        for name, data in self.pristine.items():
            p = self.snap / name
            if p.read_bytes() != data:
                p.write_bytes(data)

    def exact(self, snap) -> bool:
        return (snap.step == 4 and list(snap.tensors) == list(self.want)
                and all(bitwise_equal(snap.tensors[k], t) for k, t in self.want.items())
                and snap.state == make_state_dict(1, 4))

    def check(self, what: str) -> None:
        """One mutation is on disk: the loader and inspect must agree, refuse or be exact."""
        self.n += 1
        self.counts["tried"] += 1
        try:
            snap = load(self.manifest)
        except CorruptSnapshotError:
            verdict = "rejected"
        except Exception as e:  # noqa: BLE001 - exactly what must never happen
            self.failures.append(f"{what}: load raised {type(e).__name__}: {e}")
            return
        else:
            verdict = "loaded-exact" if self.exact(snap) else "loaded-OTHER"
        out, err = io.StringIO(), io.StringIO()
        try:
            rc = inspect_main(self.snap, out=out, err=err)
        except Exception as e:  # noqa: BLE001
            self.failures.append(f"{what}: inspect raised {type(e).__name__}: {e}")
            return
        if verdict == "loaded-OTHER" or rc != {"rejected": 1, "loaded-exact": 0}[verdict]:
            self.failures.append(f"{what}: load {verdict}, inspect exit {rc} {err.getvalue()!r}")
        if verdict == "rejected" and len(err.getvalue().strip().splitlines()) != 1:
            self.failures.append(f"{what}: inspect did not say why in one line: {err.getvalue()!r}")
        self.counts[verdict] += 1
        if self.n % FALLBACK_EVERY == 0:
            try:
                found = latest_complete(self.root)
            except Exception as e:  # noqa: BLE001
                self.failures.append(f"{what}: latest_complete raised {type(e).__name__}: {e}")
                return
            want = self.manifest if verdict == "loaded-exact" else self.older / "manifest.json"
            if found != want:
                self.failures.append(f"{what}: the resume search chose {found}")
            self.counts["through the resume search"] += 1

    def reseal_manifest(self, text: bytes) -> None:
        try:
            m = json.loads(text)
        except (ValueError, RecursionError):
            return
        if isinstance(m, dict):
            try:
                reseal(self.manifest, m)
            except (ValueError, TypeError, RecursionError):
                pass     # NaN and the like: no digest can be computed, it stays as it is

    def reseal_file(self, name: str) -> None:
        m = json.loads(self.pristine["manifest.json"])
        m["files"][name]["crc32c"] = file_crc32c(self.snap / name)
        reseal(self.manifest, m)


@pytest.fixture
def fuzz(tmp_path, write_snapshot):
    root = tmp_path / "root"
    older, snap = root / "snap-a0-s3-0", root / "snap-a0-s4-0"
    write_snapshot(older, 1, [0], step=3)
    write_snapshot(snap, 2, [0, 1], step=4, seed=1)
    publish(older)
    publish(snap)
    f = Fuzz(root, snap, older)
    assert f.exact(load(f.manifest))
    return f


def test_fuzz_every_mutation_is_refused_or_exact(fuzz, capsys):
    rng = random.Random(SEED)
    t0 = time.monotonic()
    manifest = fuzz.pristine["manifest.json"]
    for resealed in (False, True):
        for i in range(len(manifest)):
            data = bytearray(manifest)
            data[i] ^= rng.randrange(1, 256)
            fuzz.manifest.write_bytes(bytes(data))
            if resealed:
                fuzz.reseal_manifest(bytes(data))
            fuzz.check(f"manifest byte {i}{' resealed' if resealed else ''}")
            fuzz.restore()
        fuzz.counts[f"manifest bytes{' resealed' if resealed else ''}"] = len(manifest)

    stripes = sorted(n for n in fuzz.pristine if n.endswith(".safetensors"))
    data_positions = []
    for name in stripes:
        raw = fuzz.pristine[name]
        (n,) = struct.unpack("<Q", raw[:8])
        data_positions += [(name, p) for p in range(8 + n, len(raw))]
        for resealed in (False, True):
            for i in range(8 + n):
                data = bytearray(raw)
                data[i] ^= rng.randrange(1, 256)
                (fuzz.snap / name).write_bytes(bytes(data))
                if resealed:
                    fuzz.reseal_file(name)
                fuzz.check(f"{name} header byte {i}{' resealed' if resealed else ''}")
                fuzz.restore()
            key = f"header bytes{' resealed' if resealed else ''}"
            fuzz.counts[key] += 8 + n

    for name, i in rng.sample(data_positions, min(DATA_SAMPLE, len(data_positions))):
        data = bytearray(fuzz.pristine[name])
        data[i] ^= rng.randrange(1, 256)
        (fuzz.snap / name).write_bytes(bytes(data))
        fuzz.check(f"{name} data byte {i}")
        fuzz.restore()
        fuzz.counts["data bytes (sampled)"] += 1

    seconds = time.monotonic() - t0
    report = {"seed": SEED, "seconds": round(seconds, 1), **fuzz.counts,
              "failures": len(fuzz.failures)}
    with capsys.disabled():
        print("\nsnapshot fuzz:", json.dumps(report))
    if os.environ.get("JITC_FUZZ_REPORT"):
        Path(os.environ["JITC_FUZZ_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")
    assert not fuzz.failures, "\n".join(fuzz.failures[:20])
    assert fuzz.counts["tried"] == fuzz.counts["rejected"] + fuzz.counts["loaded-exact"]
    assert fuzz.counts["rejected"] > 0.9 * fuzz.counts["tried"]
    # The pristine snapshot is still there and still loads (restore() put every byte back).
    assert fuzz.exact(load(fuzz.manifest))
