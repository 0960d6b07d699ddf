"""jitc_crc32c: the known check value, incremental use, and agreement with a bitwise
reference on every length/alignment up to a few hundred bytes (hardware path edges)."""
from __future__ import annotations

import os

import pytest


def _ref(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.fixture
def crc(snapshot_lib):
    from jitc._shim import ffi_lib
    ffi, lib = ffi_lib()
    return lambda data, c=0: lib.jitc_crc32c(c, ffi.from_buffer(data), len(data))


def test_check_value(crc):
    assert crc(b"123456789") == 0xE3069283
    assert crc(b"") == 0


def test_incremental_and_alignment(crc):
    data = os.urandom(300)
    for start in range(0, 9):
        for n in list(range(0, 40)) + [63, 64, 65, 255, 291 - start]:
            piece = data[start:start + n]
            assert crc(piece) == _ref(piece), (start, n)
    whole = crc(data)
    assert crc(data[117:], crc(data[:117])) == whole
