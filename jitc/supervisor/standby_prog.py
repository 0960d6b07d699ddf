"""The standby launcher's program: run by the job's own Python interpreter, not imported.

    PYTHON standby_prog.py FD MODE TARGET WORKERS [MODULE...]

Imports MODULEs in a low-priority thread (the training job of the current attempt is
still running beside it), then blocks reading one JSON line from FD: ``{"argv": [...],
"env": {...}}``. It takes that environment and argv and runs TARGET as ``__main__``:
a script path (MODE ``script``) or a module name (MODE ``module``, as ``python -m``).
EOF without a line (the supervisor discarded it or died) exits 0 having run nothing.
WORKERS is ``torchrun`` when TARGET is torchrun: its workers are then forked from this
warm process instead of started cold (standby_workers.py); else ``-``.

Stdlib only, and nothing imported from the path before ``sys.path[0]`` is what
``python TARGET`` would have made it: this file's directory must not shadow the job's
modules (``sys`` and ``os`` are loaded by the interpreter's start-up, before any search).
"""
import os
import sys

FD, MODE, TARGET, WORKERS, WARM = (int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4],
                                   sys.argv[5:])
sys.path[0] = os.path.dirname(os.path.realpath(TARGET)) if MODE == "script" else os.getcwd()

import importlib.util  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import sysconfig  # noqa: E402
import threading  # noqa: E402

# Modules that must not be imported ahead of the attempt: they may read the attempt's
# environment at import time.
NEVER_WARM = ("jitc",)
# Where the standard library and installed packages live: never the job's own code.
INSTALLED = {os.path.realpath(p) for key in ("stdlib", "platstdlib", "purelib", "platlib")
             if (p := sysconfig.get_paths().get(key))}
HERE = os.path.dirname(os.path.abspath(__file__))
JOIN_WARM_S = 60.0     # the go waits this long for the warm-up before forking workers
# What the workers of an earlier attempt had imported (jitc/warmset.py writes it).
WORKER_MODULES = os.path.join(os.environ.get("JITC_RUN_DIR", ""), "warm-modules.json")
POLL_S = 1.0
go_seen = threading.Event()


def user_code(name: str) -> bool:
    """Whether the top-level package ``name`` is the job's own code (under the script's
    directory or the working directory) or jitc: importing it early could run user code
    with the previous attempt's environment."""
    if name in NEVER_WARM:
        return True
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return True
    origin = getattr(spec, "origin", None) if spec else None
    if not origin or origin in ("built-in", "frozen"):
        return spec is None
    path = os.path.realpath(origin)
    if any(path.startswith(d + os.sep) for d in INSTALLED):
        return False     # installed, even where the venv lies in the job's directory
    roots = {os.path.realpath(sys.path[0]), os.path.realpath(os.getcwd())}
    return any(path.startswith(r + os.sep) for r in roots if r != os.sep)


MAIN_NICE = os.getpriority(os.PRIO_PROCESS, 0)
# The warm-up's niceness. The import costs the same CPU whatever its priority; the priority
# decides when it gets it. 19 starves it while the ranks keep every core busy (a CPU-bound
# 2-core run: still cold at the first failure minutes later); 10 (about a tenth of a busy
# core) finishes within tens of seconds of training, yet barely slows a job's start-up, when
# the ranks' own imports compete for the cores. On GPU nodes the cores are mostly idle.
WARM_NICE = 10
warm_tid = None


def warm(modules: list[str]) -> None:
    global warm_tid
    warm_tid = threading.get_native_id()
    try:   # per thread on Linux: the main thread keeps its priority for the real run
        os.setpriority(os.PRIO_PROCESS, warm_tid, WARM_NICE)
    except OSError:
        pass
    for name in modules:
        if user_code(name.split(".")[0]):
            continue
        try:
            importlib.import_module(name)
        except BaseException:   # the real run imports it again and reports the error
            pass
    if WORKERS == "torchrun" and os.environ.get("JITC_RUN_DIR"):
        warm_workers()


def warm_workers() -> None:
    """Import, for the workers that will be forked from this process, what an earlier
    attempt's workers had imported by the end of their first step (waiting for the first
    attempt to write it): only more of the packages already loaded (torch and its
    dependencies) and the standard library. Any other package (the job's own, or one that
    could read the worker's rank at import) stays for the worker to import."""
    while True:
        try:
            with open(WORKER_MODULES) as f:
                names = json.load(f)
            break
        except (OSError, ValueError):
            if go_seen.is_set():
                return     # no list by the restart: nothing to wait for any more
            go_seen.wait(POLL_S)
    # Even after the go: imported once here, before the fork, not once in every worker.
    loaded = {name.split(".")[0] for name in sys.modules}
    for name in names if isinstance(names, list) else ():
        top = str(name).split(".")[0]
        if name in sys.modules or top in NEVER_WARM:
            continue
        if top in loaded or top in sys.stdlib_module_names:
            try:
                importlib.import_module(name)
            except BaseException:
                pass


def load(name: str):
    """A sibling file of this one, loaded by path (its directory is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"_jitc_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    if WORKERS == "torchrun" and "OMP_NUM_THREADS" not in os.environ:
        # What torchrun gives its workers when it starts more than one: imported under it,
        # the forked workers match them (with one worker, they differ and start cold).
        os.environ["OMP_NUM_THREADS"] = "1"
    import_env = dict(os.environ)
    warmer = threading.Thread(target=warm, args=(WARM,), name="jitc-standby-warm", daemon=True)
    warmer.start()
    with os.fdopen(FD, "rb") as f:
        line = f.readline()
    if not line.endswith(b"\n"):
        sys.exit(0)
    go = json.loads(line)
    go_seen.set()
    if warm_tid is not None:
        # The real run waits on a module the warm-up may still be importing: give it the
        # main thread's priority back (allowed for root or within RLIMIT_NICE).
        try:
            os.setpriority(os.PRIO_PROCESS, warm_tid, MAIN_NICE)
        except OSError:
            pass
    if WORKERS == "torchrun":
        warmer.join(JOIN_WARM_S)     # fork with one thread: no lock held by another
        workers = load("standby_workers")
        args = workers.parse(list(go["argv"]))     # torchrun's own reading of its command
        if not warmer.is_alive():
            work = workers.prefork(args, import_env)
            if work is not None:     # a forked copy, handed a worker: run it
                sys.argv = list(work["argv"])
                sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[0]))
                runpy.run_path(sys.argv[0], run_name="__main__")
                return
        workers.wait_for_store_port(args)
    os.environ.clear()
    os.environ.update(go["env"])
    sys.argv = list(go["argv"])
    if MODE == "module":
        runpy.run_module(TARGET, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(TARGET, run_name="__main__")


main()
