"""`jitc inspect DIR`: what a snapshot holds, and whether it can be trusted.

Verifies the snapshot first, exactly as resume does (verify.py: manifest digest, every
file's size and CRC32C, the index against the stripe headers, the meta record), then
prints the step, the layout (stripe files and sizes), every tensor with dtype, shape and
bytes, and the meta size. It only reads: a complete but unpublished snapshot is checked
against a manifest built in memory, nothing is written into the directory. The exit code
is the verdict, so scripts can gate on it: 0 valid, 1 invalid (one line on stderr naming
the file and what is wrong), 2 not found.

A snapshot with several shards (a directory holding an index, or the index itself) is
checked shard by shard, as the ranks would resume from it: the index first (layout.py),
then every manifest it names; one bad or missing shard makes the whole snapshot invalid.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TextIO

from ..errors import JitcError
from .format import DTYPES
from .layout import INDEX, MANIFEST, is_stripe_file, parse_done, read_index
from .manifest import build_manifest, complete_set
from .verify import read_manifest, verify_files

VALID, INVALID, NOT_FOUND = 0, 1, 2


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def inspect_main(path: str | Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    path = Path(path)
    index = path if path.name == INDEX else path / INDEX
    if os.path.lexists(index):
        return _inspect_index(index, out, err)
    return _inspect_one(path, out, err)


def _inspect_index(index: Path, out: TextIO, err: TextIO) -> int:
    try:
        shards = read_index(index)
    except JitcError as e:
        print(f"jitc inspect: INVALID: {e}", file=err)
        print(f"snapshot index {index}\n  INVALID", file=out)
        return INVALID
    print(f"snapshot index {index}  ({len(shards)} shards)", file=out)
    verdict = VALID
    for shard, manifest in sorted(shards.items()):
        print(f"shard {shard}:", file=out)
        code = _inspect_one(manifest, out, err)
        verdict = max(verdict, INVALID if code != VALID else VALID)   # the index promised it
    return verdict


def _inspect_one(path: Path, out: TextIO, err: TextIO) -> int:
    manifest = path if path.name == MANIFEST else path / MANIFEST
    snap_dir = manifest.parent
    if not snap_dir.is_dir():
        print(f"jitc inspect: {snap_dir}: no such snapshot directory", file=err)
        return NOT_FOUND
    try:
        if manifest.exists():
            m, how = read_manifest(manifest), "published"
            state = verify_files(snap_dir, m)
        else:
            if complete_set(snap_dir) is None:
                print(f"jitc inspect: {manifest}: manifest missing and no complete stripe set "
                      "(not a snapshot, or an incomplete one)", file=err)
                stripes = any(is_stripe_file(p.name) or parse_done(p.name)
                              for p in snap_dir.iterdir())
                return INVALID if stripes else NOT_FOUND
            # Complete but unpublished (shim-only mode): verified as the manifest that
            # publishing would write, built in memory. Inspecting never writes.
            m = build_manifest(snap_dir)
            state = verify_files(snap_dir, m)
            how = "not published (manifest built in memory)"
    except (JitcError, OSError) as e:
        print(f"jitc inspect: INVALID: {e}", file=err)
        print(f"snapshot {snap_dir}\n  INVALID", file=out)
        return INVALID
    _listing(snap_dir, m, how, out)
    keys = ", ".join(map(str, state)) or "empty"
    print(f"  meta {m['meta']['bytes']} bytes, jitc-meta/1: {keys}", file=out)
    print("  checksums: OK", file=out)
    return VALID


def _listing(snap_dir: Path, m: dict, how: str, out: TextIO) -> None:
    """What a verified snapshot holds (its manifest equals what its stripes describe)."""
    print(f"snapshot {snap_dir}  ({how})", file=out)
    print(f"  step {m['step']}  fingerprint {m['fingerprint']}  stripes {m['nstripes']}"
          f"  world_size {m.get('world_size')}", file=out)
    for name, info in m["files"].items():
        print(f"  file {name}  {info['bytes']} bytes ({_human(info['bytes'])})"
              f"  crc32c {info['crc32c']:#010x}", file=out)
    total = 0
    for name, t in m["tensors"].items():
        nbytes = math.prod(t["shape"]) * DTYPES[t["dtype"]][1]
        total += nbytes
        pieces = f"  [{len(t['chunks'])} pieces]" if len(t["chunks"]) > 1 else ""
        print(f"  tensor {name}  {t['dtype']}  {list(t['shape'])}  {nbytes} bytes{pieces}",
              file=out)
    print(f"  {len(m['tensors'])} tensors, {total} bytes ({_human(total)})", file=out)
