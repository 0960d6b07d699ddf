"""Per-rank random streams that survive the loss of the rank.

The failed rank's RNG state dies with it, yet its replacement must draw the same numbers
(dropout masks, augmentation) as the lost process would have. Rather than ship every rank's
RNG state off-process every step, jitc re-seeds each stream at every step boundary from
(seed, rank, step): any rank's streams at any step are then a pure function of values every
replacement knows. Seeded: torch (CPU and every CUDA device), Python's ``random``, numpy's
global generator.

WARNING: this replaces the user's own seeding inside ``session.steps()``; two runs with the
same seed draw the same numbers with or without failures, which is the point, but not the
same numbers as the script without jitc.
"""
from __future__ import annotations

import functools
import hashlib
import random

import torch

try:
    import numpy as np
except ImportError:  # numpy is a dependency, but keep the RNG policy usable without it
    np = None


def derive(seed: int, rank: int, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def reseed(seed: int, rank: int, step: int) -> None:
    value = derive(seed, rank, step)
    # torch.manual_seed(value) would do, but it also walks every accelerator backend
    # (CUDA, XPU, MTIA, ...) and costs most of a millisecond per step; the CPU generator
    # and CUDA's are seeded the same way directly.
    torch.default_generator.manual_seed(value)
    _seed_cuda(value)
    random.seed(value)
    if np is not None:
        np.random.seed(value & 0xFFFFFFFF)


@functools.lru_cache(maxsize=1)
def _cuda_present() -> bool:
    return torch.cuda.is_available()


def _seed_cuda(value: int) -> None:
    if torch.cuda.is_initialized():
        for generator in torch.cuda.default_generators:
            generator.manual_seed(value)
    elif _cuda_present():
        torch.cuda.manual_seed_all(value)   # queued until CUDA initialises
