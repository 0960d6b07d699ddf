"""Values a training loop carries from one step to the next, which jitc does not otherwise hold.

A loop that prefetches (nanoGPT fetches the first micro-batch of iteration k+1 at the end of
iteration k, from the global RNG that jitc re-seeds per step), keeps a running average
outside the model, or tracks a rank-0-only metric (``best_val_loss``) holds state that is
neither in the registered tensors nor a function of (seed, rank, step). A resumed run that
rebuilds it differently diverges silently. ``Session.carry(name, get)`` names such a value:
``get`` is called at every step boundary (and just before the optimizer step, see
rank_state.py) and what it returns is kept outside the rank, per rank; on resume ``carry``
returns the kept value instead.

Tensors are copied to the CPU at the capture (a CUDA tensor too: one device-to-host copy,
synchronous) and put back on their device on resume; everything else must be what the meta
record stores (jitc/snapshot/meta.py: plain data and CPU tensors, never code).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

Getter = Callable[[], Any]


def to_cpu(value: Any, devices: list[str]) -> Any:
    """``value`` with every tensor in it copied to the CPU; their devices appended to
    ``devices`` in walk order (lists, tuples and dicts in order)."""
    if isinstance(value, torch.Tensor):
        devices.append(str(value.device))
        t = value.detach()
        return t.cpu() if t.device.type != "cpu" else t
    if type(value) in (list, tuple):
        return type(value)(to_cpu(v, devices) for v in value)
    if type(value) is dict:
        return {k: to_cpu(v, devices) for k, v in value.items()}
    return value


def to_devices(value: Any, devices: Iterator[str]) -> Any:
    """The inverse of ``to_cpu``: each tensor, in the same walk order, back on its device."""
    if isinstance(value, torch.Tensor):
        device = next(devices, "cpu")
        return value if device == "cpu" else value.to(device)
    if type(value) in (list, tuple):
        return type(value)(to_devices(v, devices) for v in value)
    if type(value) is dict:
        return {k: to_devices(v, devices) for k, v in value.items()}
    return value


def capture(getters: dict[str, Getter]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(values on the CPU, devices) of every named getter, called now."""
    values, devices = {}, {}
    for name, get in getters.items():
        found: list[str] = []
        values[name] = to_cpu(get(), found)
        if found:
            devices[name] = found
    return values, devices


def restore(values: dict[str, Any], devices: dict[str, list[str]]) -> dict[str, Any]:
    return {name: to_devices(v, iter(devices.get(name, ()))) for name, v in values.items()}
