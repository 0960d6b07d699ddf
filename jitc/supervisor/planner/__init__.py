"""The recovery planner: reports in, commands out, no I/O (core.py says how)."""
from . import commands, reports
from .core import Planner
from .snapshot_run import Outcome

__all__ = ["Planner", "Outcome", "commands", "reports"]
