"""Names of a package imported on first use (PEP 562), for packages whose modules pull in
torch while one of them must not (the supervisor imports it at start)."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: name -> the submodule that defines it."""
    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(importlib.import_module(package), name, value)
        return value
    return __getattr__
