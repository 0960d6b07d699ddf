"""Deterministic test state for the snapshot tests, as numpy arrays (fast to import in the
writer subprocesses) with their safetensors dtype names. BF16 values are carried as their
raw uint16 bits. Every dtype class, a 0-d tensor, an empty tensor, and a tensor large
enough to be split across stripes."""
from __future__ import annotations

import base64
import json

import numpy as np


def make_state(seed: int, variant: str = "base") -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    if variant == "blocks":       # two alike layers: a renamed entry would load silently
        return [(f"blocks.{i}.{p}", "F32", rng.standard_normal(shape).astype(np.float32))
                for p, shape in (("w", (64, 64)), ("b", (64,))) for i in range(2)]
    w_shape = (7, 5) if variant == "other" else (5, 7)
    return [
        ("w", "F32", rng.standard_normal(w_shape).astype(np.float32)),
        ("b16", "BF16", rng.integers(0, 2**16, size=33, dtype=np.uint16)),
        ("h", "F16", rng.standard_normal((3, 4)).astype(np.float16)),
        ("i", "I64", rng.integers(-2**62, 2**62, size=10, dtype=np.int64)),
        ("flag", "BOOL", rng.integers(0, 2, size=6).astype(np.bool_)),
        ("scalar", "F32", np.array(rng.standard_normal(), dtype=np.float32)),
        ("d", "F64", np.array(rng.standard_normal(), dtype=np.float64)),
        ("empty", "F32", np.zeros((0, 3), dtype=np.float32)),
        ("u8", "U8", rng.integers(0, 256, size=17, dtype=np.uint8)),
        ("big", "F32", rng.standard_normal(1000).astype(np.float32)),
    ]


def make_state_dict(seed: int, step: int) -> dict:
    """What make_meta's blob decodes to."""
    return {"seed": seed, "step": step, "text": f"meta seed={seed} step={step} " * 3,
            "raw": bytes(range(256)), "betas": (0.9, 0.999)}


def make_meta(seed: int, step: int) -> bytes:
    """A jitc-meta/1 record (jitc/snapshot/meta.py), spelled out here by hand: the writer
    subprocesses stay free of torch, and the format is checked against its description."""
    state = {"seed": seed, "step": step, "text": f"meta seed={seed} step={step} " * 3,
             "raw": {"$t": "bytes", "v": base64.b64encode(bytes(range(256))).decode()},
             "betas": {"$t": "tuple", "v": [0.9, 0.999]}}
    return json.dumps({"format": "jitc-meta/1", "state": state}).encode()
