"""The symbol table (interpose/symbols.def), the generated wrappers and the library's
exported symbols agree: every wrapped symbol is exported, nothing resolved-only is, and no
CUDA/NCCL symbol is exported that the table does not list."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jitc._lib import lib_path

TABLE = Path(__file__).resolve().parents[2] / "interpose" / "symbols.def"
LINE = re.compile(r"^JITC_(CUDART|CUDA|NCCL)\((\w+),\s*[^,]+,\s*(\w+),")
POLICIES = {"SYNC", "QUERY", "COLL", "GROUP", "CUSTOM", "REAL"}


def table() -> dict[str, tuple[str, str]]:
    entries = {}
    for line in TABLE.read_text().splitlines():
        m = LINE.match(line)
        if m:
            lib, policy, name = m.groups()
            assert name not in entries, f"{name} listed twice"
            entries[name] = (lib, policy)
    return entries


def exported() -> set[str]:
    if shutil.which("nm") is None:
        pytest.skip("nm not available")
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib_path())], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def test_table_parses_and_covers_the_required_calls():
    entries = table()
    assert {p for _, p in entries.values()} <= POLICIES
    required = {
        "cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy",
        "cudaMemcpyAsync", "cudaLaunchKernel", "cudaGetLastError", "cudaPeekAtLastError",
        "cudaStreamQuery", "cudaEventQuery", "cuLaunchKernel", "cuCtxSynchronize",
        "cuStreamSynchronize", "cuEventSynchronize", "cuMemcpyDtoH_v2", "cuMemcpyHtoD_v2",
        "cuGetProcAddress", "cuGetProcAddress_v2", "ncclAllReduce", "ncclBroadcast",
        "ncclReduce", "ncclAllGather", "ncclReduceScatter", "ncclSend", "ncclRecv",
        "ncclGroupStart", "ncclGroupEnd", "ncclCommGetAsyncError", "ncclCommAbort",
    }
    missing = required - {n for n, (_, p) in entries.items() if p != "REAL"}
    assert not missing


def test_table_and_exported_symbols_agree():
    entries = table()
    symbols = exported()
    wrapped = {n for n, (_, p) in entries.items() if p != "REAL"}
    resolved_only = {n for n, (_, p) in entries.items() if p == "REAL"}
    assert wrapped - symbols == set(), "listed but not exported"
    assert resolved_only & symbols == set(), "resolve-only symbols must stay hidden"
    ours = {s for s in symbols if re.match(r"^(cuda|cu[A-Z]|nccl)", s)}
    assert ours - wrapped == set(), "exported but not in symbols.def"
