"""The planner's reports and commands as strict JSON, for the channel between nodes.

Only the dataclasses named in ``_TYPES`` are built back, field by field (unknown fields
are refused), and every value is plain JSON underneath: nothing decoded can run code.
Paths are written relative to the sender's snapshot root and read back under the
receiver's: the nodes share no filesystem, and each holds the same layout under its own
run directory. A path outside the root cannot be sent; one that climbs out of the root
(``..``, absolute) is refused on receipt.
"""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path, PurePosixPath
from typing import Any

from ...causes import Cause
from ...errors import ProtocolError
from ...failures import Severity
from ...protocol import Msg
from ..classify import Failure
from ..planner import commands as C
from ..planner import reports as R
from ..state import ExitCode

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for module in (R, C)
    for cls in vars(module).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__
}
_TYPES.update({"Failure": Failure, "Cause": Cause})
_ENUMS: dict[str, type[enum.Enum]] = {"Severity": Severity, "Msg": Msg, "ExitCode": ExitCode}


def encode(obj: Any, root: Path) -> Any:
    """``obj`` as JSON values; paths relative to ``root`` (ValueError: a path outside it)."""
    if isinstance(obj, enum.Enum):      # before str: Severity is a str enum
        return {"$e": type(obj).__name__, "v": obj.value if type(obj) is not Msg else obj.name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        if not obj.is_absolute():
            raise ValueError(f"relative path {obj} cannot cross nodes")
        return {"$p": str(PurePosixPath(obj.relative_to(root)))}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"$m": {k: encode(v, root) for k, v in obj.items()}}
        return {"$k": [[encode(k, root), encode(v, root)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$u": [encode(v, root) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, root) for v in obj]
    if dataclasses.is_dataclass(obj) and type(obj).__name__ in _TYPES:
        return {"$t": type(obj).__name__,
                "f": {f.name: encode(getattr(obj, f.name), root) for f in dataclasses.fields(obj)
                      if f.init}}
    raise ValueError(f"{type(obj).__name__} cannot cross nodes")


def decode(obj: Any, root: Path) -> Any:
    """What ``encode`` wrote, paths under ``root``. ProtocolError (one line) otherwise."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [decode(v, root) for v in obj]
    if not isinstance(obj, dict) or len(obj) not in (1, 2):
        raise ProtocolError(f"not a wire value: {str(obj)[:80]}")
    if set(obj) == {"$u"} and isinstance(obj["$u"], list):
        return tuple(decode(v, root) for v in obj["$u"])
    if set(obj) == {"$m"} and isinstance(obj["$m"], dict):
        return {k: decode(v, root) for k, v in obj["$m"].items()}
    if set(obj) == {"$k"} and isinstance(obj["$k"], list):
        pairs = [decode(p, root) for p in obj["$k"]]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ProtocolError("a keyed map needs [key, value] pairs")
        return {_hashable(k): v for k, v in pairs}
    if set(obj) == {"$p"} and isinstance(obj["$p"], str):
        return _under(root, obj["$p"])
    if set(obj) == {"$e", "v"} and obj["$e"] in _ENUMS:
        cls = _ENUMS[obj["$e"]]
        try:
            return cls[obj["v"]] if cls is Msg else cls(obj["v"])
        except (KeyError, ValueError):
            raise ProtocolError(f"no {obj['$e']} {obj['v']!r}") from None
    if set(obj) == {"$t", "f"} and obj["$t"] in _TYPES and isinstance(obj["f"], dict):
        cls = _TYPES[obj["$t"]]
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        if not set(obj["f"]) <= names:
            raise ProtocolError(f"{cls.__name__} has no field(s) {sorted(set(obj['f']) - names)}")
        fields = {k: decode(v, root) for k, v in obj["f"].items()}
        if cls is Failure and isinstance(fields.get("progress"), list):
            fields["progress"] = tuple(fields["progress"])   # compared with tuples
        try:
            return cls(**fields)
        except TypeError as e:
            raise ProtocolError(f"{cls.__name__}: {e}") from None
    raise ProtocolError(f"not a wire value: {str(obj)[:80]}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, (dict, set)):
        raise ProtocolError("a map key must be a plain value")
    return key


def _under(root: Path, rel: str) -> Path:
    parts = [] if rel == "." else rel.split("/")
    if any(p in ("..", ".", "") for p in parts) or "\0" in rel:
        raise ProtocolError(f"path {rel!r} does not stay under the snapshot root")
    return root.joinpath(*parts)


def rebase_text(value: Any, old: Path, new: Path) -> Any:
    """An event's fields with the head's snapshot paths spelled as this node's."""
    if isinstance(value, str):
        prefix = str(old)
        if value == prefix or value.startswith(prefix + "/"):
            return str(new) + value[len(prefix):]
        return value
    if isinstance(value, dict):
        return {k: rebase_text(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase_text(v, old, new) for v in value]
    return value
