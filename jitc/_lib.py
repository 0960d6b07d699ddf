"""Where libjitc.so is: inside the installed package (wheel or editable install)."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

from . import env
from .errors import ShimError

LIB_NAME = "libjitc.so"


def lib_path() -> Path:
    override = env.get(env.LIB)
    if override:
        path = Path(override)
    else:
        path = Path(str(importlib.resources.files("jitc").joinpath(LIB_NAME)))
    if not path.is_file():
        raise ShimError(f"{path} not found: build the package (pip install -e .) or set {env.LIB}")
    return path.resolve()
