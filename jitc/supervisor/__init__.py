"""The supervisor behind ``jitc supervise``: start the job, watch it, recover, restart.

One mechanism per module: ``options`` (every knob and its relations), ``events`` (the
event log and the terminal timeline), ``process`` (start/stop a job so nothing is
orphaned), ``server`` (the rank socket), ``classify`` (root cause), ``recovery`` (the
JIT snapshot across healthy replicas), ``policy`` (restart limit), ``state`` (states,
exit codes, result) and ``loop`` (the event loop tying them together).
"""
from __future__ import annotations

from .loop import Supervisor
from .options import Options
from .state import ExitCode, RunResult

__all__ = ["ExitCode", "Options", "RunResult", "Supervisor"]
