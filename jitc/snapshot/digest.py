"""The self-digest that manifests and snapshot indexes carry: one rule, one place.

``sha256:`` of the object's canonical JSON (sorted keys, no spaces, no NaN), the
``digest`` field itself left out. It catches any change to the file after it was written;
it is not authentication (whoever can write the directory can recompute it, which is why
snapshot directories are private to the user: jitc/private.py). Torch-free on purpose:
the supervisor reads indexes without importing torch.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

DIGEST = "digest"


def digest_of(obj: dict[str, Any]) -> str:
    """ValueError/RecursionError for an object that is not plain JSON (NaN, too deep)."""
    body = {k: v for k, v in obj.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()
