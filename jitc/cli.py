"""The ``jitc`` command line: ``jitc lib``, ``jitc supervise``, ``jitc inspect``,
``jitc export-dcp``.

Usage errors are one line on stderr (``jitc: error: ...``) and exit code 2, and nothing
is started: every input is validated before the job is.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import JitcError, ShimError, UsageError
from .supervisor.state import ExitCode

_EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {int(c):<4} {c.name.lower().replace('_', ' ')}" for c in ExitCode)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """jitc: just-in-time checkpointing and failure recovery for PyTorch training."""


@cli.command("lib")
def lib_cmd() -> None:
    """Print the path of libjitc.so (for LD_PRELOAD=$(jitc lib))."""
    from ._lib import lib_path
    click.echo(str(lib_path()))


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
def inspect_cmd(path: Path) -> int:
    """Verify a snapshot directory (or manifest) and print what it holds."""
    from .snapshot import inspect_main   # lazy: the snapshot package pulls in safetensors
    return inspect_main(path)


@cli.command("export-dcp")
@click.argument("snapshot", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def export_dcp_cmd(snapshot: Path, out: Path) -> int:
    """Write a published SNAPSHOT (manifest, directory or snapshot.json) as a
    torch.distributed.checkpoint directory OUT, loadable at any world size.

    \b
    Exit codes: 0 written, 1 the snapshot does not verify or cannot be exported
    (nothing written), 2 usage (OUT exists and is not empty).
    """
    from .snapshot.export_dcp import export_dcp   # lazy: pulls in torch
    done = export_dcp(snapshot, out)
    click.echo(f"exported step {done.step} ({done.tensors} tensors from {done.shards} "
               f"shard{'s' if done.shards != 1 else ''}) to {done.out}")
    return 0


@cli.command("supervise", epilog=_EXIT_CODES_HELP,
             context_settings={"allow_interspersed_args": False})
@click.option("--run-dir", type=click.Path(path_type=Path, readable=False), default=None,
              help="Run directory (events.jsonl, snapshots/, socket). "
                   "Default: ./jitc-runs/<YYYYmmdd-HHMMSS>-<pid>.")
@click.option("--max-restarts", type=int, default=3, show_default=True,
              help="Restarts allowed after failures.")
@click.option("--hang-timeout", type=float, default=None,
              help="Fixed hang timeout in seconds (overrides JITC_HANG_TIMEOUT). "
                   "Default: a multiple of the observed step time (JITC_HANG_MULTIPLE, 5) "
                   "with a floor (JITC_HANG_FLOOR, 30 s).")
@click.option("--grace", type=float, default=None,
              help="Seconds between SIGTERM and SIGKILL when stopping the job (overrides "
                   "JITC_GRACE; default 10). A rank holds a SIGTERM for less than this.")
@click.option("--restart-grace", type=float, default=0.1, show_default=True,
              help="The same when the job is stopped for a restart after its snapshot was "
                   "published: nothing of it is needed any more, and the restart waits.")
@click.option("--snapshot-timeout", type=float, default=None,
              help="Seconds each rank may take to write its part of the just-in-time "
                   "snapshot (overrides JITC_SNAPSHOT_TIMEOUT; default 120).")
@click.option("--no-standby", "no_standby", is_flag=True,
              help="Start every restart cold. Default: the next attempt's launcher is "
                   "started and warmed up during training, and takes over at the restart.")
@click.option("--inject", "injects", multiple=True, metavar="SPEC",
              help="Fault to inject: KIND@rank=R,step=S[,phase=P][,attempt=A] (repeatable).")
@click.option("--lib", type=click.Path(path_type=Path), default=None,
              help="libjitc.so to preload (default: the installed one; JITC_LIB overrides).")
@click.option("--coord-port", type=int, default=None,
              help="Several nodes: the port of the supervisors' store on the rendezvous host "
                   "(default: the rendezvous port + 1).")
@click.option("--node-timeout", type=float, default=None,
              help="Several nodes: seconds without a node's heartbeat before it is lost "
                   "(default 5).")
@click.option("--join-timeout", type=float, default=None,
              help="Several nodes: seconds for every node to join (at the start, and after a "
                   "node was lost) before the job stops (default 120).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def supervise_cmd(run_dir, max_restarts, hang_timeout, grace, restart_grace, snapshot_timeout,
                  no_standby, injects, lib, coord_port, node_timeout, join_timeout,
                  command) -> int:
    """Run COMMAND (e.g. torchrun ...) under the jitc supervisor:

    jitc supervise [OPTIONS] -- COMMAND...
    """
    from . import private
    from ._lib import lib_path
    from .faults import parse_specs
    from .supervisor import Options, Supervisor
    from .supervisor.options import default_run_dir
    from .supervisor.preflight import check_command, check_run_dir

    if not command:
        raise UsageError("missing COMMAND (usage: jitc supervise [OPTIONS] -- COMMAND...)")
    from .supervisor.cluster.topology import topology_of
    topology = topology_of(tuple(command), dict(os.environ), coord_port)
    check_command(command)
    specs = tuple(parse_specs(list(injects)))
    if lib is None:
        try:
            lib = lib_path()
        except ShimError as e:
            raise UsageError(str(e)) from None
    elif not lib.is_file():
        raise UsageError(f"--lib {lib}: no such file")
    check_run_dir(run_dir or default_run_dir())
    if run_dir is None:
        run_dir = default_run_dir()
        private.make_dirs(run_dir.parent)
    opts = Options(command=tuple(command), run_dir=run_dir, lib=lib.resolve(), injects=specs,
                   max_restarts=max_restarts, hang_timeout_s=hang_timeout,
                   grace_s=grace, restart_grace_s=restart_grace,
                   snapshot_timeout_s=snapshot_timeout, standby=not no_standby,
                   topology=topology, **{k: v for k, v in (("node_timeout_s", node_timeout),
                                                           ("join_timeout_s", join_timeout))
                                         if v is not None})
    result = Supervisor(opts).run()
    return int(result.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Entry point (``jitc`` console script)."""
    try:
        code = cli.main(args=argv, prog_name="jitc", standalone_mode=False)
    except click.exceptions.UsageError as e:
        _error(e.format_message())
        code = ExitCode.USAGE
    except UsageError as e:
        _error(str(e))
        code = ExitCode.USAGE
    except click.exceptions.Abort:
        code = ExitCode.INTERRUPTED
    except JitcError as e:
        _error(str(e))
        code = ExitCode.JOB_FAILED
    sys.exit(int(code or 0))


def _error(text: str) -> None:
    line = " ".join(str(text).split())     # one line, whatever the message held
    print(f"jitc: error: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
