"""A member node's supervisor: its ranks' reports go to the head's planner, the head's
commands for this node come back and the shell (loop.py) carries them out.

It decides nothing about failures. What it keeps is what the shell needs to check its own
connections (the ranks that said HELLO here) and to end: the attempt it was told to start,
and the head's Finish. If the head stops answering (the store is gone with it), the member
stops its part of the job and ends with a clear message: without the head's decision no
node may recover on its own (two nodes recovering apart resume inconsistent state).
Messages: see head.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ...errors import ProtocolError
from ..options import Options
from ..planner import commands as C
from ..planner import reports as R
from ..policy import RestartPolicy
from ..server import RankInfo
from ..state import ExitCode, State
from . import wire
from .channel import HEAD


class Member:
    def __init__(self, opts: Options, channel: Any, root: Path, incarnation: str,
                 files: tuple[str, int, str], *, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.channel = channel
        self.root = root
        self.inc = incarnation
        self.log = log
        self.policy = RestartPolicy(opts.max_restarts)
        self._wall = time.time() - clock()
        self.ranks: dict[int, RankInfo] = {}
        self.attempt = 0
        self.resume: Path | None = None
        self.root_history: list[int | None] = []
        self.state = State.STARTING
        self.head_root: Path | None = None
        self._lost_said = False
        self._dropped = 0
        channel.send(HEAD, {"k": "join", "node": channel.node, "inc": incarnation,
                            "files": list(files)})

    def allows_restart(self, attempt: int) -> bool:
        return self.policy.allows_restart(attempt)

    def begin(self, now: float) -> list[Any]:
        return []                 # the head says when to start

    def feed(self, report: Any, now: float) -> list[Any]:
        if isinstance(report, R.Hello):
            self.ranks[report.rank] = RankInfo(report.rank, pid=report.pid, shard=report.shard,
                                               num_shards=report.num_shards,
                                               world_size=report.world_size,
                                               node=self.channel.node, last_change=now)
        elif isinstance(report, R.Gone) and report.rank in self.ranks:
            self.ranks[report.rank].connected = False
        elif isinstance(report, R.JobStarted):
            self.state = State.RUNNING
        if self.channel.lost is not None:
            return []
        try:
            self.channel.send(HEAD, {"k": "r", "inc": self.inc,
                                     "v": wire.encode(report, self.root)})
        except ValueError as e:
            self.log(f"cannot send {type(report).__name__} to the head: {e}")
        except Exception as e:          # the head is going; tick() says so once it is gone
            self.log(f"cannot reach the head: {e}")
        return []

    def tick(self, now: float, launcher_rc: int | None = None) -> list[Any]:
        lost = self.channel.lost
        if lost is None or self._lost_said or self.state is State.DONE:
            return []
        self._lost_said = True
        self.state = State.DONE
        why = f"the head node is gone ({lost}); stopped this node's part of the job"
        return [C.StopJob(None, None),
                C.Emit("gave_up", self.attempt, {"kind": "head_lost", "reason": why}),
                C.Finish(int(ExitCode.JOB_FAILED), why)]

    def fileno(self) -> int:
        return self.channel.fileno()

    def drain(self, now: float) -> list[Any]:
        out: list[Any] = []
        for msg in self.channel.drain():
            if msg.get("inc") != self.inc:
                continue              # said to an earlier run of this node
            try:
                out += self._message(msg, now)
            except (ProtocolError, KeyError, TypeError, ValueError) as e:
                self._dropped += 1
                if self._dropped <= 20:
                    self.log(f"dropped a message from the head: {e}")
        return out

    def _message(self, msg: dict[str, Any], now: float) -> list[Any]:
        if msg.get("k") == "welcome":
            self.head_root = Path(str(msg["root"]))
            return []
        if msg.get("k") != "c":
            raise ProtocolError(f"unknown message kind {msg.get('k')!r}")
        cmd = wire.decode(msg["v"], self.root)
        if isinstance(cmd, C.StartJob):
            self.attempt, self.resume, self.ranks = cmd.attempt, cmd.resume, {}
            self.state = State.STARTING
        elif isinstance(cmd, C.Send) and self.head_root is not None:
            # A SNAPSHOT names its directory as text, under the head's root: this node's.
            cmd = C.Send(cmd.rank, cmd.type, wire.rebase_text(cmd.body, self.head_root, self.root))
        elif isinstance(cmd, C.Emit):
            fields = cmd.fields
            if self.head_root is not None:
                fields = wire.rebase_text(fields, self.head_root, self.root)
            at = None if cmd.at is None else cmd.at - self._wall
            cmd = C.Emit(cmd.event, cmd.attempt, fields, at=at, echo=cmd.echo)
        elif isinstance(cmd, C.Finish):
            self.state = State.DONE
        return [cmd]
