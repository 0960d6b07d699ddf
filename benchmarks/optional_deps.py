"""A benchmark checks its optional dependencies before it starts, not after its runs:
compare.py plots only after ~45 minutes of training, and a missing matplotlib then lost
every figure it had measured."""
from __future__ import annotations

import importlib.util
import sys


def require(*modules: str, extra: str = "bench") -> None:
    """Exit with one line naming what to install when any of ``modules`` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"{sys.argv[0]}: needs {', '.join(missing)}: "
                 f"pip install 'jitc[{extra}]' (or pip install {' '.join(missing)})")
