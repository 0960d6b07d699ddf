"""The failure table (jitc/failure_kinds.def) is the one source of what a kind means: the
library was compiled from it, Python reads it, the documentation lists the same kinds, and
adding a kind is one line that both sides pick up. The supervisor's decisions (blame, who
may write, what stops the job) follow its columns."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jitc import failures
from jitc.failures import Blame, Severity
from jitc.supervisor.classify import Failure, root_causes

from .conftest import REPO, child_env

DOCS = REPO / "docs" / "internals.md"


def python_view(kinds=None, severities=None) -> dict:
    kinds = failures.KINDS if kinds is None else kinds
    return {"kinds": [{"name": k.name, "trusted": k.trusted, "hang": k.hang,
                       "by_code": k.by_code, "blame": k.blame.value} for k in kinds.values()],
            "severities": list(failures.SEVERITIES if severities is None else severities)}


def test_table_is_consistent():
    kinds = failures.KINDS
    assert {failures.EXCEPTION, failures.PEER, failures.CRASH, failures.EXIT,
            failures.HANG} <= kinds.keys()
    for k in kinds.values():
        assert k.hang == (k.blame is Blame.PROGRESS), k     # a hang is blamed by progress
        assert not (k.secondary and not k.trusted), k       # never blamed, so never suspect
    assert [s.value for s in Severity] == list(failures.SEVERITIES)
    assert failures.HANG_KINDS == {"hang", "nccl-hang"}
    assert failures.SECONDARY_KINDS == {"peer"}


def test_library_was_compiled_from_the_same_table():
    # In a fresh process, as a rank loads it (not after this process imported torch).
    code = ("from jitc._shim import ffi_lib; ffi, lib = ffi_lib(); "
            "print(ffi.string(lib.jitc_failure_table()).decode())")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert json.loads(out) == python_view()


def test_documentation_lists_the_table_kinds():
    text = DOCS.read_text()
    listed = re.search(r"Failure `kind` values \(jitc/failure_kinds.def\):(.*?)\n\n", text, re.S)
    assert listed, "docs/internals.md lost its list of failure kinds"
    assert re.findall(r"`([a-z-]+)`", listed.group(1)) == list(failures.KINDS)


def test_a_new_kind_is_one_line_on_both_sides(tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ not available")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "jitc").mkdir()
    shutil.copy(REPO / "csrc" / "failure.h", tmp_path / "csrc")
    line = 'JITC_FAILURE(HostLost,  "host-lost",  SUSPECT, NOHANG, FATAL,  SELF)\n'
    table = failures.TABLE.read_text().replace("JITC_FAILURE(Crash,", line + "JITC_FAILURE(Crash,")
    (tmp_path / "jitc" / "failure_kinds.def").write_text(table)
    (tmp_path / "main.cpp").write_text(r'''
#include <cstdio>
#include "failure.h"
int main() {
  using namespace jitc;
  std::printf("{\"kinds\":[");
  for (size_t i = 0; i < kNumKinds; ++i) {
    const KindInfo& k = failure_table::kKinds[i];
    const char* b = k.blame == Blame::Self ? "self" : k.blame == Blame::Progress ? "progress" : "never";
    std::printf("%s{\"name\":\"%s\",\"trusted\":%s,\"hang\":%s,\"by_code\":%s,\"blame\":\"%s\"}",
                i ? "," : "", k.name, k.trusted ? "true" : "false", k.hang ? "true" : "false",
                k.by_code ? "true" : "false", b);
  }
  std::printf("],\"severities\":[");
  for (size_t i = 0; i < kNumSeverities; ++i)
    std::printf("%s\"%s\"", i ? "," : "", failure_table::kSeverities[i]);
  std::printf("],\"host_lost\":\"%s\"}\n", kind_name(FailureKind::HostLost));
}
''')
    exe = tmp_path / "table"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path / 'csrc'}",
                    str(tmp_path / "main.cpp"), "-o", str(exe)], check=True, timeout=120)
    cpp = json.loads(subprocess.run([str(exe)], capture_output=True, text=True, check=True,
                                    timeout=30).stdout)
    assert cpp.pop("host_lost") == "host-lost"             # the enum value exists in C++
    kinds, severities = failures._parse(table)
    assert cpp == python_view(kinds, severities)
    assert kinds["host-lost"] == failures.Kind("host-lost", False, False, False, Blame.SELF)


# -- the supervisor's decisions follow the columns ------------------------------------------
def report(kind, severity=None, rank=0, ts=1.0, **extra):
    body = {"kind": kind, "rank": rank, **extra}
    if severity is not None:
        body["severity"] = severity
    return Failure.from_message(body, ts, rank)


def test_severity_comes_from_the_message_only_for_by_code_kinds():
    assert report("cuda-error", "recoverable").severity is Severity.RECOVERABLE
    assert report("nccl-error", "recoverable").severity is Severity.RECOVERABLE
    assert report("cuda-error", "fatal").fatal
    assert report("cuda-error").fatal                        # an older shim: fatal
    assert report("cuda-error", "bogus").fatal
    assert report("exception", "recoverable").fatal          # not the code's to decide


def test_recoverable_failures_are_never_a_root_cause():
    fs = [report("cuda-error", "recoverable", rank=0, ts=1.0),
          report("hang", rank=1, ts=2.0, progress=[3, 1, 0])]
    assert [f.rank for f in root_causes(fs)] == [1]
    assert root_causes(fs[:1]) == []


@pytest.mark.parametrize("kind, trusted", [
    ("peer", True), ("hang", True), ("nccl-hang", True), ("nccl-error", True),
    ("exception", False), ("cuda-error", False), ("signal", False), ("exit", False),
    ("crash", False), ("a-kind-from-a-newer-shim", False),
])
def test_who_may_write_follows_the_state_column(kind, trusted):
    assert report(kind).trusted is trusted


def test_an_unknown_kind_is_a_primary_failure():
    fs = [report("peer", rank=0, ts=1.0), report("a-kind-from-a-newer-shim", rank=2, ts=2.0)]
    assert [f.rank for f in root_causes(fs)] == [2]


def test_shim_refuses_a_kind_the_table_does_not_have():
    code = ("from jitc._shim import ffi_lib\nffi, lib = ffi_lib()\n"
            "assert lib.jitc_init(0, 0, 1, 0, 1) == 0\n"
            "print(lib.jitc_report_failure(b'no-such-kind', b''),"
            " ffi.string(lib.jitc_last_error()).decode())\n"
            "print(lib.jitc_report_failure(b'exception', b'boom'))\n"
            "lib.jitc_shutdown(1)\n")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                         text=True, timeout=30, check=True).stdout.splitlines()
    assert out == ["1 jitc_report_failure: unknown kind no-such-kind", "0"]
