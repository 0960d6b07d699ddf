"""`jitc inspect DIR`: what a snapshot holds, and whether it can be trusted.

Prints the step, the layout (stripe files and sizes), every tensor with dtype, shape and
bytes, and the meta size; then verifies every checksum. The exit code is the verdict, so
scripts can gate on it: 0 valid, 1 invalid (one line on stderr naming the file), 2 not
found.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from ..errors import JitcError
from .format import DTYPES
from .manifest import MANIFEST, complete_set, publish
from .verify import read_manifest, verify_manifest

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
    manifest = path if path.name == MANIFEST else path / MANIFEST
    if not manifest.parent.is_dir():
        print(f"jitc inspect: {manifest.parent}: no such snapshot directory", file=err)
        return NOT_FOUND
    if not manifest.exists():
        if complete_set(manifest.parent) is None:
            print(f"jitc inspect: {manifest}: manifest missing and no complete stripe set "
                  "(not a snapshot, or an incomplete one)", file=err)
            return NOT_FOUND if not any(manifest.parent.glob("stripe-*")) else INVALID
        try:
            # Complete but unpublished (shim-only mode): publishing is idempotent and safe.
            publish(manifest.parent)
        except JitcError as e:
            print(f"jitc inspect: {e}", file=err)
            return INVALID
    try:
        m = read_manifest(manifest)
    except JitcError as e:
        print(f"jitc inspect: {e}", file=err)
        return INVALID
    print(f"snapshot {manifest.parent}", file=out)
    print(f"  step {m['step']}  fingerprint {m['fingerprint']}  stripes {m.get('nstripes')}"
          f"  world_size {m.get('world_size')}", file=out)
    for name, info in m["files"].items():
        print(f"  file {name}  {info['bytes']} bytes ({_human(info['bytes'])})"
              f"  crc32c {info['crc32c']:#010x}", file=out)
    total = 0
    for name, t in m["tensors"].items():
        n = 1
        for s in t["shape"]:
            n *= s
        nbytes = n * DTYPES[t["dtype"]][1]
        total += nbytes
        pieces = f"  [{len(t['chunks'])} pieces]" if len(t["chunks"]) > 1 else ""
        print(f"  tensor {name}  {t['dtype']}  {list(t['shape'])}  {nbytes} bytes{pieces}",
              file=out)
    print(f"  {len(m['tensors'])} tensors, {total} bytes ({_human(total)});"
          f" meta {m['meta']['bytes']} bytes", file=out)
    try:
        verify_manifest(manifest)
    except JitcError as e:
        print(f"jitc inspect: INVALID: {e}", file=err)
        print("  checksums: INVALID", file=out)
        return INVALID
    print("  checksums: OK", file=out)
    return VALID
