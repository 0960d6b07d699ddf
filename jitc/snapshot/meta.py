"""The meta record: the small, non-tensor state of a step, in a format that cannot run code.

Why this exists: the meta blob (optimizer hyper-parameters, scheduler and user
``state_dict()``s, recorded values) used to be a pickle, and unpickling a file found on
disk runs whatever code the file names. This is tagged JSON instead: decoding it only
ever builds None, bool, int, float, str, bytes, list, tuple, dict and small CPU tensors.

    blob   = {"format": "jitc-meta/1", "state": VALUE}        (UTF-8 JSON, strict: no NaN)
    VALUE  = null | true | false | int | float | "str" | [VALUE, ...]
           | {"str key": VALUE, ...}                          a dict whose keys are all str
           | {"$t": "dict", "items": [[KEY, VALUE], ...]}     any other dict (int keys...)
           | {"$t": "tuple", "v": [VALUE, ...]}
           | {"$t": "float", "v": "nan" | "inf" | "-inf"}
           | {"$t": "bytes", "v": "<base64>"}
           | {"$t": "tensor", "dtype": "F32", "shape": [..], "v": "<base64 of raw bytes>"}

Floats are written with ``repr`` and so read back bit for bit (-0.0 included); ints are
exact at any size. Dict key order is kept. A dict with a key ``"$t"`` is written in the
``items`` form, so a user's data is never mistaken for a tag.

``encode`` runs at every step boundary (``Session._meta``): it walks the state once and
hands the result to the C JSON encoder. Anything else (a function, a lambda, an object,
a CUDA tensor) is refused with ``MetaError`` naming where it is, e.g.
``meta.scheduler.lr_lambdas[0]: cannot store a function``, when ``protect()`` starts, not
at recovery time. ``decode`` raises ``CorruptSnapshotError`` for anything that is not this
format, an old pickle included (refused, never unpickled).
"""
from __future__ import annotations

import base64
import json
import math
from typing import Any

from ..errors import CorruptSnapshotError, JitcError

FORMAT = "jitc-meta/1"
TAG = "$t"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetaError(JitcError):
    """State that cannot be stored in the meta record (names where it is)."""


# -- encoding ----------------------------------------------------------------------------

class Frozen:
    """A value that does not change between steps, encoded once and added under ``key`` to
    every meta record ``encode(state, frozen=...)`` writes (an FSDP job's sharding record:
    thousands of entries, which encoding afresh each step would cost milliseconds)."""

    def __init__(self, key: str, value: Any):
        self.key = key
        self.value = value
        body = encode({key: value}).decode("ascii")        # refused here, once, if at all
        start = body.index('"state":{') + len('"state":{')
        self.text = body[start:-2]                          # '"key":<value>'


def encode(state: Any, frozen: Frozen | None = None) -> bytes:
    """The meta blob of ``state`` (and of ``frozen``'s key, see Frozen); MetaError naming
    the first value it cannot store."""
    if frozen is not None:
        if not isinstance(state, dict) or not state or frozen.key in state or TAG in state \
                or not all(type(k) is str for k in state):
            raise MetaError(f"meta: a frozen {frozen.key!r} goes into a non-empty dict with "
                            "plain keys that lacks it")
        text = encode(state).decode("ascii")
        # A dict with plain string keys is a JSON object: '...,"state":{...}}'.
        return (text[:-2] + "," + frozen.text + "}}").encode("ascii")
    try:
        # Fast path: atoms and all-atom containers go to the C encoder as they are.
        text = _DUMPS({"format": FORMAT, "state": _fast(state)})
    except (_Slow, ValueError, RecursionError):
        # Non-finite floats (the C encoder refuses them) or a value to refuse: walk again
        # keeping the path, to tag the floats or to name the value.
        try:
            text = _DUMPS({"format": FORMAT, "state": _enc(state, "meta")})
        except ValueError as e:   # an int too long for str() (sys.set_int_max_str_digits)
            raise MetaError(f"meta: cannot store this state ({e})") from None
        except RecursionError:
            raise MetaError("meta: cannot store this state (nested too deeply, or it "
                            "contains itself)") from None
    return text.encode("ascii")


class _Slow(Exception):
    """The fast path met something it leaves to the path-keeping walk."""


def _json_encoder():
    """The C JSON encoder, built once (JSONEncoder.encode builds one per call)."""
    from json import encoder as je
    if je.c_make_encoder is None:
        return json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
    # ASCII out (lone surrogates survive); no circularity markers: the walk would have
    # recursed forever first. Arguments: markers, default, encoder, indent, key and item
    # separators, sort_keys, skipkeys, allow_nan.
    c = je.c_make_encoder(None, _refuse, je.c_encode_basestring_ascii, None, ":", ",",
                          False, False, False)
    return lambda o: "".join(c(o, 0))


def _refuse(o: Any) -> Any:
    raise _Slow


_DUMPS = _json_encoder()
_ATOMS = frozenset((str, int, bool, float, type(None)))
_STR = frozenset((str,))


def _fast(x: Any) -> Any:
    t = type(x)
    if t in _ATOMS:
        return x
    if t is list:
        if _ATOMS.issuperset(map(type, x)):
            return x
        return [v if type(v) in _ATOMS else _fast(v) for v in x]
    if t is dict:
        if TAG in x or not _STR.issuperset(map(type, x)):
            return {TAG: "dict", "items": [[_fast(k), _fast(v)] for k, v in x.items()]}
        if _ATOMS.issuperset(map(type, x.values())):
            return x
        return {k: v if type(v) in _ATOMS else _fast(v) for k, v in x.items()}
    if t is tuple:
        return {TAG: "tuple", "v": [_fast(v) for v in x]}
    try:
        return _enc_other(x, "")
    except MetaError:
        raise _Slow from None


def _child(path: str, key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _enc(x: Any, path: str) -> Any:
    t = type(x)
    if t is str or t is int or t is bool or x is None:
        return x
    if t is float:
        return x if math.isfinite(x) else {TAG: "float", "v": repr(x)}
    if t is list:
        return [_enc(v, f"{path}[{i}]") for i, v in enumerate(x)]
    if t is dict:
        return _enc_dict(x, path)
    if t is tuple:
        return {TAG: "tuple", "v": [_enc(v, f"{path}[{i}]") for i, v in enumerate(x)]}
    return _enc_other(x, path)


def _enc_dict(x: dict, path: str) -> Any:
    if TAG not in x and all(type(k) is str for k in x):
        return {k: _enc(v, _child(path, k)) for k, v in x.items()}
    return {TAG: "dict", "items": [[_enc(k, f"{path}<key {k!r}>"), _enc(v, _child(path, k))]
                                   for k, v in x.items()]}


def _enc_other(x: Any, path: str) -> Any:
    """The rarer types, off the fast path."""
    if isinstance(x, dict):          # OrderedDict and defaultdict come back as dict
        return _enc_dict(x, path) if path else _fast(dict(x))
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):           # IntEnum, numpy integers are not int: see below
        return int(x)
    if isinstance(x, float):         # numpy.float64 is a float
        return _enc(float(x), path)
    if isinstance(x, str):
        return str(x)
    if isinstance(x, (bytes, bytearray)):
        return {TAG: "bytes", "v": base64.b64encode(x).decode("ascii")}
    if type(x).__name__ == "Size" and type(x).__module__ == "torch":
        return _enc(tuple(x), path)
    if _is_tensor(x):
        return _enc_tensor(x, path)
    if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        item = x.item()              # a numpy scalar: its Python value
        if type(item) in (bool, int, float):
            return _enc(item, path)
    raise MetaError(f"{path}: cannot store {_what(x)} (the meta record holds None, bool, "
                    "int, float, str, bytes, list, tuple, dict and CPU tensors)")


def _what(x: Any) -> str:
    import types
    if isinstance(x, (types.FunctionType, types.BuiltinFunctionType)):
        return "a function"
    if isinstance(x, types.MethodType):
        return "a method"
    if isinstance(x, tuple):
        return f"a {type(x).__name__} (a tuple subclass)"
    return f"a {type(x).__module__}.{type(x).__qualname__}"


def _is_tensor(x: Any) -> bool:
    import sys
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _enc_tensor(x: Any, path: str) -> Any:
    from .format import TORCH_TO_ST
    if x.device.type != "cpu":
        raise MetaError(f"{path}: cannot store a {x.device.type} tensor in the meta record "
                        "(return it on the CPU from state_dict(), or register it as state)")
    import torch
    if x.layout is not torch.strided or x.is_quantized or x.dtype not in TORCH_TO_ST:
        raise MetaError(f"{path}: cannot store a {x.dtype} {x.layout} tensor")
    raw = x.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {TAG: "tensor", "dtype": TORCH_TO_ST[x.dtype], "shape": list(x.shape),
            "v": base64.b64encode(raw).decode("ascii")}


# -- decoding ----------------------------------------------------------------------------

def decode(blob: bytes, where: str = "meta") -> Any:
    """The state stored by ``encode``; CorruptSnapshotError (``where`` names the file) for
    anything else. Builds plain values only: nothing in the blob can run code."""
    if not blob:
        raise CorruptSnapshotError(f"{where}: the meta record is empty")
    if blob[:1] == b"\x80":
        raise CorruptSnapshotError(f"{where}: the meta record is a pickle (an older jitc, or "
                                   f"forged); refused, never unpickled: not usable")
    try:
        top = json.loads(bytes(blob).decode("utf-8"), object_hook=_hook,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError, _Bad) as e:
        raise CorruptSnapshotError(f"{where}: the meta record is not {FORMAT} ({e})") from None
    if not (type(top) is dict and top.get("format") == FORMAT and "state" in top
            and len(top) == 2):
        raise CorruptSnapshotError(f"{where}: the meta record is not {FORMAT}")
    return top["state"]


def decode_state(blob: bytes, where: str = "meta") -> dict:
    """The session state dict of a snapshot's meta blob (an empty blob: no state was set)."""
    if not blob:
        return {}
    state = decode(blob, where)
    if type(state) is not dict:
        raise CorruptSnapshotError(f"{where}: the meta record is not a dict")
    return state


class _Bad(Exception):
    """A malformed tagged value (turned into CorruptSnapshotError by decode)."""


def _no_constant(name: str) -> None:
    raise _Bad(f"{name} is not JSON")


def _hook(d: dict) -> Any:
    tag = d.get(TAG)
    if tag is None:
        return d
    v = d.get("v")
    if tag == "tuple" and len(d) == 2 and type(v) is list:
        return tuple(v)
    if tag == "dict" and len(d) == 2 and type(d.get("items")) is list:
        out = {}
        for item in d["items"]:
            if type(item) is not list or len(item) != 2:
                raise _Bad("bad dict item")
            try:
                out[item[0]] = item[1]
            except TypeError:
                raise _Bad(f"unhashable dict key {type(item[0]).__name__}") from None
        return out
    if tag == "float" and len(d) == 2 and type(v) is str and v in _NONFINITE:
        return _NONFINITE[v]
    if tag == "bytes" and len(d) == 2 and type(v) is str:
        return _b64(v)
    if tag == "tensor" and len(d) == 4:
        return _dec_tensor(d)
    raise _Bad(f"unknown or malformed tag {str(tag)[:20]!r}")


def _b64(v: str) -> bytes:
    try:
        return base64.b64decode(v, validate=True)
    except (ValueError, TypeError):
        raise _Bad("bad base64") from None


def _dec_tensor(d: dict) -> Any:
    import torch

    from .format import DTYPES
    dtype, shape, v = d.get("dtype"), d.get("shape"), d.get("v")
    if (type(dtype) is not str or dtype not in DTYPES or type(shape) is not list
            or type(v) is not str or not all(type(s) is int and s >= 0 for s in shape)):
        raise _Bad("malformed tensor")
    raw = _b64(v)
    numel = math.prod(shape)
    if numel * DTYPES[dtype][1] != len(raw):
        raise _Bad(f"tensor of shape {shape} {dtype} has {len(raw)} bytes")
    try:
        t = torch.empty(shape, dtype=DTYPES[dtype][0])
    except (RuntimeError, ValueError, OverflowError):
        raise _Bad(f"tensor of shape {shape[:8]}") from None
    if raw:
        t.reshape(-1).view(torch.uint8).copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    return t
