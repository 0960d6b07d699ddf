"""The standby launcher: which commands can be pre-warmed, and that a warmed command runs
exactly as its own exec would (argv, environment, sys.path, exit status), never imports
the job's own modules ahead of time, and leaves nothing behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from jitc.supervisor.process import child_setup
from jitc.supervisor.standby import Standby, plan
from jitc.supervisor.state import ExitCode

from .conftest import fake_job

PY = sys.executable


def _script(path: Path, body: str, shebang: str | None = None) -> Path:
    path.write_text(f"#!{shebang or PY}\n{body}")
    path.chmod(0o755)
    return path


REPORT = """import json, os, sys
import localmod
json.dump({"argv": sys.argv, "path0": sys.path[0], "name": __name__,
           "attempt": os.environ.get("JITC_ATTEMPT"), "resume": os.environ.get("JITC_RESUME"),
           "keep": os.environ.get("KEEP"), "marker": localmod.MARK},
          open(os.environ["OUT"], "w"))
sys.exit(7)
"""


def _job_dir(tmp_path: Path) -> Path:
    d = tmp_path / "job"
    d.mkdir(exist_ok=True)
    # The job's own module: importing it ahead of the attempt would run user code early.
    (d / "localmod.py").write_text(
        "import os\nMARK = os.environ.get('JITC_ATTEMPT')\n"
        "open(os.environ['OUT'] + '.imported', 'a').write(MARK or '-')\n")
    return d


def test_plan_recognises_python_entry_points(tmp_path):
    env = dict(os.environ)
    launcher = _script(tmp_path / "mylauncher", "import re\nimport sys, json\nfrom torch.distributed.run import main\n")
    p = plan((str(launcher), "--nproc-per-node", "2"), env)
    assert (p.mode, p.target, p.interpreter) == ("script", str(launcher), (PY,))
    assert p.argv == (str(launcher), "--nproc-per-node", "2")
    assert p.warm == ("re", "sys", "json", "torch.distributed.run")
    m = plan((PY, "-m", "torch.distributed.run", "train.py"), env)
    assert (m.mode, m.target, m.argv, m.warm) == (
        "module", "torch.distributed.run", ("torch.distributed.run", "train.py"),
        ("torch", "torch.distributed"))
    s = plan((PY, str(launcher), "x"), env)
    assert (s.mode, s.target, s.argv) == ("script", str(launcher), (str(launcher), "x"))


def test_plan_leaves_other_commands_cold(tmp_path):
    env = dict(os.environ)
    shell = _script(tmp_path / "run.sh", "echo hi\n", shebang="/bin/sh")
    flagged = _script(tmp_path / "flagged", "pass\n", shebang=f"{PY} -u")
    assert plan((str(shell),), env) is None
    assert plan((str(flagged),), env) is None              # interpreter flags: cold
    assert plan(("/bin/true",), env) is None               # not a script
    assert plan((PY, "-u", str(shell)), env) is None       # python with flags
    assert plan((PY, "-c", "pass"), env) is None
    assert plan(("no-such-command-xyz",), env) is None


def _spawn(tmp_path: Path, out: Path, env_extra: dict[str, str] | None = None):
    d = _job_dir(tmp_path)
    script = _script(d / "launch", REPORT)
    env = dict(os.environ, OUT=str(out), KEEP="yes", JITC_ATTEMPT="0", **(env_extra or {}))
    p = plan((str(script), "--flag", "v"), env)
    return p, Standby(p, env, child_setup(os.getpid())), env, script


def test_warm_command_runs_as_its_own_exec_would(tmp_path):
    out = tmp_path / "out.json"
    p, standby, env, script = _spawn(tmp_path, out)
    time.sleep(1.0)   # the warm-up thread has run: the job's own module must not be imported
    assert not Path(str(out) + ".imported").exists()
    assert standby.popen.poll() is None
    popen = standby.go(dict(env, JITC_ATTEMPT="1", JITC_RESUME="/m.json"))
    assert popen is not None and popen.wait(timeout=30) == 7
    got = json.loads(out.read_text())
    assert got == {"argv": [str(script), "--flag", "v"], "path0": str(script.parent),
                   "name": "__main__", "attempt": "1", "resume": "/m.json", "keep": "yes",
                   "marker": "1"}   # imported once, by the real run, with the attempt's env
    assert Path(str(out) + ".imported").read_text() == "1"


def test_changed_environment_or_discard_means_cold(tmp_path):
    out = tmp_path / "out.json"
    _, standby, env, _ = _spawn(tmp_path, out)
    pid = standby.pid
    assert standby.go(dict(env, KEEP="changed")) is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not out.exists()
    _, standby, _, _ = _spawn(tmp_path, out)
    standby.discard()
    assert standby.popen.poll() is not None and not out.exists()


def test_supervised_restart_uses_the_standby(supervise):
    run = supervise("--inject", "crash@rank=1,step=5",
                    job=fake_job(2, "--steps", "10", "--step-time", "0.05"))
    assert run.rc == ExitCode.SUCCESS, run.stderr
    assert [e["launcher"] for e in run.named("start")] == ["cold", "standby"]
    assert run.named("resumed")[0]["step"] == 5
    cold = supervise("--no-standby", "--inject", "crash@rank=1,step=5",
                     job=fake_job(2, "--steps", "10", "--step-time", "0.05"))
    assert cold.rc == ExitCode.SUCCESS, cold.stderr
    assert [e["launcher"] for e in cold.named("start")] == ["cold", "cold"]


def test_no_standby_outlives_the_supervisor(tmp_path):
    from .conftest import child_env, supervise_argv
    proc = subprocess.Popen(supervise_argv(tmp_path / "run", "--",
                                           *fake_job(2, "--steps", "30", "--step-time", "0.05")),
                            env=child_env(), stderr=subprocess.PIPE, text=True)
    sup = psutil.Process(proc.pid)
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            seen |= {c.pid for c in sup.children(recursive=True)
                     if "standby_prog.py" in " ".join(c.cmdline())}
        except psutil.Error:
            pass
        time.sleep(0.05)
    assert proc.wait(timeout=30) == ExitCode.SUCCESS, proc.stderr.read()
    assert seen, "a standby was started while the job trained"
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in seen if psutil.pid_exists(p)],
                                    timeout=3)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
