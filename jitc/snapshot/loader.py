"""Loading a snapshot, and choosing which one to load.

``load`` never returns anything it has not verified (invariant I2, verify.py): manifest
digest and schema, every file's size and CRC32C, the index against the headers, the meta
record; then tensors are read with the ``safetensors`` package and pieces of split
tensors are put back together. ``latest_complete`` and ``load_latest`` pick the newest
snapshot under a root that passes that check, skipping (and logging) any that does not,
so a damaged newest snapshot falls back to an older good one rather than stopping the job
or, worse, loading garbage.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CorruptSnapshotError
from .format import DTYPES
from .layout import MANIFEST, snapshot_dirs
from .manifest import complete_set, publish
from .meta import decode_state
from .verify import verify_manifest

log = logging.getLogger(__name__)


@dataclass
class LoadedSnapshot:
    step: int
    tensors: dict[str, torch.Tensor]   # CPU, original shapes, registration order
    meta: bytes                         # the meta record as stored
    manifest: dict[str, Any]
    path: Path                          # the manifest
    state: dict[str, Any] = field(default_factory=dict)   # the meta record, decoded (meta.py)


def load(manifest_path: str | Path) -> LoadedSnapshot:
    """The snapshot's tensors and state, always verified first (an unverified manifest's
    file names could reach outside the snapshot). CorruptSnapshotError for anything wrong,
    never another error."""
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST
    m = verify_manifest(manifest_path)
    root = manifest_path.parent
    handles: dict[str, Any] = {}

    def get(fname: str, key: str) -> torch.Tensor:
        try:
            if fname not in handles:
                handles[fname] = safe_open(str(root / fname), framework="pt", device="cpu")
            return handles[fname].get_tensor(key)
        except Exception as e:   # safetensors raises its own error types
            raise CorruptSnapshotError(f"{root / fname}: cannot read {key!r} ({e})") from None

    tensors: dict[str, torch.Tensor] = {}
    for name, t in m["tensors"].items():
        chunks = sorted(t["chunks"], key=lambda c: c[2])
        shape = tuple(t["shape"])
        if len(chunks) == 1 and chunks[0][1] == name:
            value = get(chunks[0][0], name)
        else:
            value = torch.cat([get(f, k).reshape(-1) for f, k, _, _ in chunks]).reshape(shape)
        if tuple(value.shape) != shape or value.dtype != DTYPES[t["dtype"]][0]:
            raise CorruptSnapshotError(f"{root}: tensor {name!r} is {value.dtype} "
                                       f"{tuple(value.shape)}, manifest says {t['dtype']} {shape}")
        tensors[name] = value
    meta = get(m["meta"]["file"], m["meta"]["key"]).numpy().tobytes()
    state = decode_state(meta, str(root / m["meta"]["file"]))
    return LoadedSnapshot(step=m["step"], tensors=tensors, meta=meta, manifest=m,
                          path=manifest_path, state=state)


def check_compatible(loaded: LoadedSnapshot,
                     expected: dict[str, tuple[torch.dtype | str, tuple[int, ...]]]) -> None:
    """Raise CorruptSnapshotError if the snapshot is not of this model (first difference)."""
    where = f"snapshot {loaded.path}"
    for name, (dtype, shape) in expected.items():
        t = loaded.tensors.get(name)
        if t is None:
            raise CorruptSnapshotError(f"{where} is from another model: no tensor {name!r}")
        want = DTYPES[dtype][0] if isinstance(dtype, str) else dtype
        if t.dtype != want or tuple(t.shape) != tuple(shape):
            raise CorruptSnapshotError(
                f"{where} is from another model: {name!r} is {t.dtype} {tuple(t.shape)}, "
                f"expected {want} {tuple(shape)}")
    extra = [n for n in loaded.tensors if n not in expected]
    if extra:
        raise CorruptSnapshotError(
            f"{where} is from another model: unexpected tensor {extra[0]!r}")


def _candidate_step(snap_dir: Path) -> tuple[int, float] | None:
    """(step, mtime) of a snapshot directory, from its manifest or its .done records."""
    manifest = snap_dir / MANIFEST
    has_manifest = manifest.is_file()
    if has_manifest:
        try:
            step = json.loads(manifest.read_text(encoding="utf-8")).get("step")
            if isinstance(step, int):
                return step, manifest.stat().st_mtime
        except (OSError, ValueError, AttributeError, RecursionError):
            pass
    # No (readable) manifest: order by the completion records. A garbled manifest stays a
    # candidate so that verification names the problem in the log instead of hiding it.
    try:
        found = complete_set(snap_dir)
        if found is not None:
            step = found[1][0].get("step")
            return (step if isinstance(step, int) else -1), snap_dir.stat().st_mtime
    except OSError:
        pass
    return (-1, 0.0) if has_manifest else None


def _candidates(root: Path) -> list[Path]:
    """Snapshot directories under root, newest first (by the step they claim)."""
    cands = []
    for d in snapshot_dirs(root):
        key = _candidate_step(d)
        if key is not None:
            cands.append((key, d))
    return [d for _, d in sorted(cands, key=lambda c: c[0], reverse=True)]


def _first_usable(root: Path, use, rejected: list | None = None):
    """``use(manifest)`` of the newest candidate for which it succeeds, or None.

    A directory with every stripe's completion record but no manifest (shim-only mode: the
    rank that wrote it exited) is published here on the spot. Any verification or parse
    failure makes a candidate not usable: skipped with a warning naming the file, and
    ``(directory, reason)`` appended to ``rejected`` when given."""
    for d in _candidates(Path(root)):
        try:
            manifest = d / MANIFEST
            if not manifest.is_file():
                manifest = publish(d)
            return use(manifest)
        except (CorruptSnapshotError, OSError) as e:   # a ShimError is not the snapshot's
            log.warning("skipping snapshot %s: %s", d, e)
            if rejected is not None:
                rejected.append((d, str(e)))
    return None


def latest_complete(root: str | Path, rejected: list | None = None) -> Path | None:
    """Manifest of the newest snapshot under root that verifies, or None."""
    def verified(manifest: Path) -> Path:
        verify_manifest(manifest)
        return manifest
    return _first_usable(Path(root), verified, rejected)


def load_latest(root: str | Path, rejected: list | None = None) -> LoadedSnapshot | None:
    """The newest snapshot under root that verifies and loads (one pass), or None;
    the candidates skipped on the way go to ``rejected`` (see _first_usable)."""
    return _first_usable(Path(root), load, rejected)
