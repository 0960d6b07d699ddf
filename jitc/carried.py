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


def skeleton(value: Any) -> Any:
    """``value`` with each tensor replaced by (the tensor, its version counter): equal
    skeletons mean the same tensors, unmodified, in the same plain structure. Holding the
    tensors keeps their ids from being reused by new ones."""
    if isinstance(value, torch.Tensor):
        return (_Same(value), value._version)
    if type(value) in (list, tuple):
        return (type(value), tuple(skeleton(v) for v in value))
    if type(value) is dict:
        return (dict, tuple((k, skeleton(v)) for k, v in value.items()))
    return (type(value), value)


class _Same:
    """Compares by identity (a tensor's ``==`` is elementwise)."""
    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    __hash__ = None


class Captures:
    """Encodes each carried value at a capture, reusing the last encoding of a value whose
    tensors are the same, unmodified objects (a prefetched batch is captured before the
    optimizer step and again at the boundary: copied to the CPU and encoded once)."""

    def __init__(self, encode: Callable[[Any], bytes]):
        self._encode = encode
        self._last: dict[str, tuple[Any, bytes, list[str]]] = {}

    def capture(self, getters: dict[str, Getter]) -> tuple[dict[str, bytes], dict[str, list[str]]]:
        """(name -> encoded value on the CPU, name -> devices of its tensors), now."""
        blobs, devices = {}, {}
        for name, get in getters.items():
            value = get()
            key = skeleton(value)
            last = self._last.get(name)
            if last is not None and last[0] == key:
                blob, found = last[1], last[2]
            else:
                found = []
                blob = self._encode(to_cpu(value, found))
                # Only values with tensors are worth keeping: the rest encode in microseconds.
                if found:
                    self._last[name] = (key, blob, found)
                else:
                    self._last.pop(name, None)
            blobs[name] = blob
            if found:
                devices[name] = found
        return blobs, devices


def restore(values: dict[str, Any], devices: dict[str, list[str]]) -> dict[str, Any]:
    return {name: to_devices(v, iter(devices.get(name, ()))) for name, v in values.items()}
