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


WORKER = """import json, os, sys
warm = "torch" in sys.modules    # forked from the warm launcher: torch came with it
learned = "torch._dynamo" in sys.modules    # from warm-modules.json
import numpy
json.dump({"warm": warm, "learned": learned, "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(),
           "name": __name__, "rank": os.environ["RANK"], "world": os.environ["WORLD_SIZE"],
           "attempt": os.environ.get("JITC_ATTEMPT"), "leader": os.getsid(0) == os.getpid(),
           "unbuffered": sys.stdout.write_through, "draw": int(numpy.random.randint(1 << 30))},
          open(os.path.join(os.environ["OUT"], "rank%s.json" % os.environ["RANK"]), "w"))
sys.exit(int(os.environ.get("CODE", "0")))
"""


def _torchrun_standby(tmp_path: Path, nproc: int, env_extra: dict[str, str]):
    from jitc.supervisor.standby_workers import expected_workers, parse
    out = tmp_path / "out"
    out.mkdir()
    d = _job_dir(tmp_path)
    worker = d / "worker.py"
    worker.write_text(WORKER)
    torchrun = Path(PY).parent / "torchrun"
    command = (str(torchrun), "--standalone", "--nproc-per-node", str(nproc), str(worker),
               "--flag", "v")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(OUT=str(out), JITC_ATTEMPT="0", **env_extra)
    p = plan(command, env)
    assert p is not None and p.workers == "torchrun"
    assert expected_workers(parse(list(p.argv))) == (nproc, str(worker))
    return Standby(p, env, child_setup(os.getpid())), env, out, worker


def _leftovers(out: Path) -> list[int]:
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("OUT") == str(out):
                pids.append(proc.pid)
        except psutil.Error:
            pass
    return pids


def test_torchrun_workers_are_forked_warm(tmp_path, monkeypatch):
    # From the repository, where the venv lies under the working directory: installed
    # packages are still not the job's own code.
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # What an earlier attempt's workers imported (jitc/warmset.py): torch's lazy parts yes,
    # the job's own module no.
    (run_dir / "warm-modules.json").write_text(json.dumps(["localmod", "torch._dynamo"]))
    standby, env, out, worker = _torchrun_standby(tmp_path, 2, {"JITC_RUN_DIR": str(run_dir)})
    popen = standby.go(dict(env, JITC_ATTEMPT="1"))
    assert popen is not None and popen.wait(timeout=60) == 0
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, g in enumerate(got):
        assert g["warm"] and g["learned"], "the worker started cold"
        assert g["argv"] == [str(worker), "--flag", "v"] and g["name"] == "__main__"
        assert g["path0"] == str(worker.parent) and g["cwd"] == os.getcwd()
        assert (g["rank"], g["world"], g["attempt"]) == (str(r), "2", "1")
        assert g["leader"] and g["unbuffered"]
    assert got[0]["draw"] != got[1]["draw"], "numpy's global generator was not reseeded"
    deadline = time.monotonic() + 10
    while _leftovers(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(out)


def test_torchrun_workers_start_cold_where_the_environment_differs(tmp_path):
    # One worker: torchrun leaves OMP_NUM_THREADS unset, the copies imported under 1.
    standby, env, out, _ = _torchrun_standby(tmp_path, 1, {"CODE": "3"})
    popen = standby.go(dict(env, JITC_ATTEMPT="1"))
    assert popen is not None and popen.wait(timeout=60) != 0     # the worker's exit 3
    assert not json.loads((out / "rank0.json").read_text())["warm"]
    deadline = time.monotonic() + 10
    while _leftovers(out) and time.monotonic() < deadline:   # the unused copy exits too
        time.sleep(0.1)
    assert not _leftovers(out)


def test_restart_waits_for_the_store_port_to_be_released():
    import socket
    import threading
    from jitc.supervisor.standby_workers import parse, wait_for_store_port
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("", 0))
    held.listen(1)
    port = held.getsockname()[1]
    args = parse(["torchrun", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(port), "train.py"])
    assert not wait_for_store_port(args, limit_s=0.3)        # bounded: gives up
    threading.Timer(0.3, held.close).start()
    t0 = time.monotonic()
    assert wait_for_store_port(args, limit_s=10)
    assert 0.2 < time.monotonic() - t0 < 5
    assert wait_for_store_port(parse(["torchrun", "--standalone", "--nproc-per-node", "2", "t.py"]))
