"""`jitc export-dcp SNAPSHOT OUT`: a published snapshot as a torch.distributed.checkpoint.

Why this exists: a jitc snapshot is made to resume the job that wrote it, on the same
mesh. To evaluate it in one process, or to resume it at another world size, the user
needs DCP, which reshards at load time. The export assembles every global tensor from
the shards' local pieces (``meta["sharding"]``, written by FSDP2/HSDP ranks) in one
process (unshard.py) and saves a plain, unsharded state dict with DCP; DCP then loads it
into plain tensors or into DTensors of any mesh by reading the chunk each rank needs.

The state dict in OUT (README "Loading a snapshot with DCP", docs/internals.md "Snapshot
layout"):

    model        {state_dict key: tensor}          the model's own keys, unsharded
    optim        {"state": {"<i>": {key: value}}, "param_groups": [{hyper-parameters}]}
                 i is jitc's index of the parameter (its position in param_groups,
                 flattened, jitc/state.py); param_groups without "params"
    scheduler    the scheduler's state_dict (only if the snapshot has one)
    extra        {name: state_dict} of protect()'s extra_state (only if there is any)
    step         the snapshot's completed step: the step a resume starts at

Load it with ``{"model": model.state_dict(), "optim": OptimizerState(optimizer),
"step": 0}`` as DCP's target. The optimizer's keys are jitc's positional indices, not
the FQNs of ``torch.distributed.checkpoint.state_dict.get_state_dict``: the snapshot does
not record which model key each optimizer index belongs to, the loading side knows it.

Nothing is loaded unverified (``loader.load``), and OUT appears whole or not at all: it
is written as a private temporary beside it and renamed into place.

WARNING: every global tensor is held in this process's memory at once (the model and
its optimizer state, unsharded).
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from .. import private
from ..errors import JitcError, SnapshotError, UsageError
from ..state import optimizer_params
from .layout import INDEX, read_index, resume_manifest
from .loader import load
from .unshard import assemble

_OPTIM_NAME = re.compile(r"^optim\.(0|[1-9][0-9]*)\.(.+)$")


@dataclass(frozen=True)
class Exported:
    out: Path
    step: int
    shards: int
    tensors: int


def export_dcp(snapshot: str | os.PathLike, out: str | os.PathLike) -> Exported:
    """Write the snapshot named by ``snapshot`` (a manifest, a snapshot directory or an
    index) as a DCP checkpoint directory ``out``. UsageError if ``out`` exists and is not
    an empty directory; CorruptSnapshotError if a shard does not verify or the shards do
    not fit together; JitcError for a snapshot this export cannot represent."""
    out = Path(os.path.abspath(out))
    _check_out(out)
    index = _index_of(Path(snapshot))
    manifests = read_index(index) if index else {0: resume_manifest(snapshot, 0, 1)}
    shards = [load(manifests[s]) for s in sorted(manifests)]
    tensors, meta, step = assemble(shards, sorted(manifests) if index else None)
    _write(state_dict(tensors, meta, step), out)
    return Exported(out, step, len(shards), len(tensors))


def _index_of(named: Path) -> Path | None:
    """The index ``named`` is or holds, else None (a manifest or a one-shard directory)."""
    if named.is_dir() and (named / INDEX).exists():
        return named / INDEX
    return named if named.name == INDEX else None


# -- the state dict DCP saves -----------------------------------------------------------
def state_dict(tensors: dict[str, torch.Tensor], meta: dict, step: int) -> dict[str, Any]:
    """The export's layout (module docstring) of registered names and the meta record."""
    model: dict[str, torch.Tensor] = {}
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        m = _OPTIM_NAME.match(name)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = t
        elif name.startswith("model.") and len(name) > len("model."):
            model[name[len("model."):]] = t
        else:
            raise JitcError(f"tensor {name!r} is neither model.<key> nor optim.<i>.<key>: "
                            "export-dcp does not know where it belongs")
    optim = meta.get("optim") or {}
    for index, extra in (optim.get("per_param") or {}).items():
        state.setdefault(int(index), {}).update(extra)
    out: dict[str, Any] = {
        "model": model,
        "optim": {"state": {str(i): state[i] for i in sorted(state)},
                  "param_groups": list(optim.get("param_groups") or [])},
        "step": step}
    if meta.get("scheduler") is not None:
        out["scheduler"] = meta["scheduler"]
    if meta.get("extra"):
        out["extra"] = meta["extra"]
    return out


class OptimizerState:
    """DCP ``Stateful`` for the export's ``optim`` entry: loads state in place into
    ``optimizer`` (DTensor state included, resharded by DCP), then its hyper-parameters.
    Missing state (no step taken yet) is created first, as DCP's own helpers do."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        opt = self.optimizer
        if not opt.state:
            from torch.distributed.checkpoint.state_dict import _init_optim_state
            _init_optim_state(opt)   # a step with lr 0 and zero gradients
        return {"state": {str(i): opt.state[p] for i, p in enumerate(optimizer_params(opt))
                          if opt.state.get(p)},
                "param_groups": [{k: v for k, v in g.items() if k != "params"}
                                 for g in opt.param_groups]}

    def load_state_dict(self, loaded: dict[str, Any]) -> None:
        # The state dicts were the optimizer's own (filled in place); the groups were copies.
        for group, saved in zip(self.optimizer.param_groups, loaded["param_groups"]):
            group.update(saved)


# -- OUT, whole or not at all -----------------------------------------------------------
def _check_out(out: Path) -> None:
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory: refusing to replace it")
    if any(out.iterdir()):
        raise UsageError(f"{out} is not empty: refusing to write into it")


def _write(sd: dict[str, Any], out: Path) -> None:
    """DCP-save ``sd`` into a private temporary beside ``out``, then rename it to ``out``
    (which replaces an empty directory and nothing else)."""
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"  # tmpfiles.py's
    try:
        private.make_dirs(out.parent)
        os.mkdir(tmp, private.DIR_MODE)
        with warnings.catch_warnings():   # "... the intent is to save in a single process"
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(tmp), no_dist=True)
        for f in tmp.iterdir():
            os.chmod(f, private.FILE_MODE)
        _fsync_dir(tmp)
        os.rename(tmp, out)
        _fsync_dir(out.parent)
    except (OSError, CheckpointException) as e:
        raise SnapshotError(f"cannot write {out}: {_reason(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(e: BaseException) -> str:
    """One line for a failed write; DCP wraps what its writer raised, with a traceback."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f" ({e.filename})" if e.filename else "")
    return f"{type(e).__name__}: {e}"[:200]
