"""Which tensors make up a rank's training state, under stable names.

Names are positional where the user's objects have no names of their own (optimizer state
is keyed by the parameter's index in ``param_groups``), so the same script produces the
same names on every replica and after every restart.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import sharding

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
META_NAME = "__jitc_meta__"


@dataclass(frozen=True)
class StateTensor:
    name: str
    tensor: torch.Tensor    # as the user's object holds it: a DTensor for sharded state

    @property
    def local(self) -> torch.Tensor:
        """What this rank holds and registers: a DTensor's local shard, else the tensor."""
        return sharding.local(self.tensor)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP/FSDP-style wrappers that keep it as ``.module``."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def model_tensors(model: torch.nn.Module) -> list[StateTensor]:
    return [StateTensor(f"model.{k}", v) for k, v in unwrap(model).state_dict(keep_vars=True).items()
            if isinstance(v, torch.Tensor)]


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[StateTensor]:
    out = []
    for index, param in enumerate(optimizer_params(optimizer)):
        for key, value in sorted(optimizer.state.get(param, {}).items()):
            if isinstance(value, torch.Tensor):
                out.append(StateTensor(f"optim.{index}.{key}", value))
    return out


def optimizer_scalars(optimizer: torch.optim.Optimizer) -> dict:
    """What optimizer state is not tensors: hyper-parameters (a scheduler changes lr) and
    any non-tensor per-parameter entries."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    per_param = {}
    for index, param in enumerate(optimizer_params(optimizer)):
        extra = {k: v for k, v in optimizer.state.get(param, {}).items()
                 if not isinstance(v, torch.Tensor)}
        if extra:
            per_param[index] = extra
    return {"param_groups": groups, "per_param": per_param}


def optimizer_state_size(optimizer: torch.optim.Optimizer) -> int:
    """Cheap change detector: number of per-parameter state entries."""
    return sum(len(s) for s in optimizer.state.values())


def check_registrable(items: list[StateTensor]) -> None:
    from .errors import JitcError
    for item in items:
        t = item.local
        if t.dtype not in DTYPES:
            raise JitcError(f"cannot protect {item.name}: dtype {t.dtype} is not supported")
        if not t.is_contiguous():
            raise JitcError(f"cannot protect {item.name}: tensor is not contiguous")
        if t.device.type not in ("cpu", "cuda"):
            raise JitcError(f"cannot protect {item.name}: device {t.device} is not supported")
