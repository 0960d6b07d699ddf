"""Writing a rebuilt stage as an ordinary published snapshot, from the supervisor.

Why this exists: snapshots are normally written by the shim inside the ranks; a stage
rebuilt by CheckFree exists only in the supervisor. It is written by the same native
engine (``jitc_write_tensors``, csrc/snapshot/tensors.cpp): one stripe file with the
engine's header, fingerprint, CRC32C and ``.done`` record, then ``snapshot.publish``
writes the manifest by atomic rename. So ``jitc inspect`` verifies it and ``protect()``
loads it like any other, and the format has one writer.

The library is only dlopen'ed here, not preloaded; the call starts no thread and needs
no ``jitc_init``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import private
from .._shim import STATUS_NAMES, ffi_lib
from ..errors import SnapshotError
from ..limits import SNAPSHOT_TIMEOUT_S
from ..snapshot import layout
from ..snapshot.format import dtype_name
from ..snapshot.manifest import publish


def _write_tensors(root: Path, directory: Path, step: int, tensors: dict[str, torch.Tensor],
                   meta: bytes) -> None:
    """The native call; SnapshotError with the engine's one-line reason if it refuses or fails."""
    ffi, lib = ffi_lib()
    keep = []   # every buffer the C structs point into, alive until the call returns
    descs = ffi.new("jitc_tensor[]", len(tensors))
    for d, (name, t) in zip(descs, tensors.items()):
        t = t.detach().cpu().contiguous()
        fields = (ffi.new("char[]", name.encode()), ffi.new("char[]", dtype_name(t.dtype).encode()),
                  ffi.new("int64_t[]", list(t.shape)))
        keep += [t, *fields]
        d.name, d.dtype, d.shape = fields
        d.ndim, d.nbytes = t.dim(), t.numel() * t.element_size()
        d.data = ffi.cast("void *", t.data_ptr())
    status = lib.jitc_write_tensors(os.fsencode(root), os.fsencode(directory),
                                    layout.stripe_stem(0, 1).encode(), step, descs, len(tensors),
                                    ffi.from_buffer(meta), len(meta), SNAPSHOT_TIMEOUT_S)
    if status != 0:
        detail = ffi.string(lib.jitc_last_error()).decode(errors="replace")
        raise SnapshotError(detail or f"jitc_write_tensors: {STATUS_NAMES.get(status, status)}")


def write_snapshot(directory: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor],
                   meta: bytes, *, world_size: int | None = None,
                   root: str | os.PathLike | None = None) -> Path:
    """Write ``tensors`` (in this order) + ``meta`` as a one-stripe snapshot of ``step``;
    returns the manifest. The write is confined to below ``root`` (the snapshot root; by
    default ``directory``'s parent, made if missing): each level below it must be a real
    directory of this user, or is made 0700."""
    directory = Path(os.path.abspath(directory))
    if root is None:
        root = directory.parent
        private.make_dirs(root)
    _write_tensors(Path(os.path.abspath(root)), directory, step, tensors, meta)
    return publish(directory, world_size=world_size)
