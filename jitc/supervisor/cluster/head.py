"""The head node's supervisor: the job's one planner, fed by every node through the channel.

To the shell (loop.py) it looks like the planner (``begin``/``feed``/``tick``, ``ranks``,
``attempt``...) plus a ``fileno`` to watch and a ``drain`` to call when it is readable.
What the router (router.py) decides for another node goes out on the channel as wire
values (wire.py); what comes in is a member's join, or its report, decoded under this
node's snapshot root.

Messages on the channel (dicts, strict JSON):
    member -> head   {"k": "join", "node", "inc", "files": [host, port, token]}
                     {"k": "r", "inc", "v": <report>}
    head -> member   {"k": "welcome", "inc", "root": <the head's snapshot root>}
                     {"k": "c", "inc", "v": <command>}
``inc`` names one run of a node's supervisor: a node started again (a replacement) is a
new incarnation, and what was said to or by the old one is dropped.
"""
from __future__ import annotations

import select
import time
from pathlib import Path
from typing import Any, Callable

from ...errors import ProtocolError
from ..options import Options
from ..planner import Planner
from ..planner import commands as C
from . import wire
from .router import Router


class Head:
    def __init__(self, opts: Options, channel: Any, root: Path, incarnation: str,
                 files: tuple[str, int, str], *, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.planner = Planner(opts)
        self.channel = channel
        self.root = root
        self.log = log
        self._wall = time.time() - clock()
        topo = opts.topology
        self.router = Router(self.planner, channel.node, topo.nnodes,
                             node_timeout_s=opts.node_timeout_s,
                             join_timeout_s=opts.join_timeout_s)
        self.router.joined(channel.node, incarnation, files, clock())
        self._dropped = 0
        self._gone: set[Any] = set()     # incarnations that said goodbye

    # -- what the shell reads, as from the planner ---------------------------------------
    @property
    def state(self):
        return self.planner.state

    @property
    def ranks(self):
        return self.planner.ranks

    @property
    def attempt(self) -> int:
        return self.planner.attempt

    @property
    def root_history(self):
        return self.planner.root_history

    @property
    def resume(self):
        return self.planner.resume

    def allows_restart(self, attempt: int) -> bool:
        return self.planner.policy.allows_restart(attempt)

    # -- the planner's interface, for the whole job --------------------------------------
    def begin(self, now: float) -> list[Any]:
        return self._send(self.router.begin(now))

    def feed(self, report: Any, now: float) -> list[Any]:
        return self._send(self.router.report(self.channel.node, report, now))

    def tick(self, now: float, launcher_rc: int | None = None) -> list[Any]:
        local = self.router.beats(self.channel.beats(), now)
        return self._send(local + self.router.tick(now))

    def fileno(self) -> int:
        return self.channel.fileno()

    def drain(self, now: float) -> list[Any]:
        local: list[Any] = []
        for msg in self.channel.drain():
            try:
                local += self._message(msg, now)
            except (ProtocolError, KeyError, TypeError, ValueError) as e:
                self._dropped += 1
                if self._dropped <= 20:
                    self.log(f"dropped a message from the channel: {e}")
        return self._send(local)

    def await_goodbyes(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for every live member's goodbye."""
        deadline = time.monotonic() + timeout_s
        while self._waiting_goodbye() and time.monotonic() < deadline:
            select.select([self.channel], [], [], max(0.0, deadline - time.monotonic()))
            for msg in self.channel.drain():
                if msg.get("k") == "bye":
                    self._gone.add(msg.get("inc"))

    def _waiting_goodbye(self) -> bool:
        return any(info.incarnation not in self._gone
                   for n, info in self.router.nodes.items()
                   if n != self.channel.node and info.alive)

    def _message(self, msg: dict[str, Any], now: float) -> list[Any]:
        kind, inc = msg.get("k"), msg.get("inc")
        if kind == "bye":
            self._gone.add(inc)
            return []
        if kind == "join":
            node, files = msg["node"], msg.get("files")
            if not isinstance(node, int) or not isinstance(inc, str):
                raise ProtocolError("a join needs an int node and a str incarnation")
            if files is not None:
                host, port, token = files
                files = (str(host), int(port), str(token))
            out = self.router.joined(node, inc, files, now)
            self.channel.send(node, {"k": "welcome", "inc": inc, "root": str(self.root)})
            return out
        if kind == "r":
            node = self._node_of(inc)
            if node is None:
                return []          # an incarnation replaced since: its news is stale
            return self.router.report(node, wire.decode(msg["v"], self.root), now)
        raise ProtocolError(f"unknown message kind {kind!r}")

    def _node_of(self, inc: Any) -> int | None:
        for n, info in self.router.nodes.items():
            if info.incarnation == inc and info.alive:
                return n
        return None

    def _send(self, local: list[Any]) -> list[Any]:
        remote, self.router.remote = self.router.remote, []
        for node, cmd in remote:
            info = self.router.nodes.get(node)
            if info is None or not info.alive:
                continue
            if isinstance(cmd, C.Emit) and cmd.at is not None:
                # Another machine's clock: the event's time travels as wall-clock time.
                cmd = C.Emit(cmd.event, cmd.attempt, cmd.fields, at=cmd.at + self._wall,
                             echo=cmd.echo)
            try:
                value = wire.encode(cmd, self.root)
            except ValueError as e:
                self.log(f"cannot send {type(cmd).__name__} to node {node}: {e}")
                continue
            try:
                self.channel.send(node, {"k": "c", "inc": info.incarnation, "v": value})
            except Exception as e:     # the store is this process's: a member went away
                self.log(f"cannot reach node {node}: {e}")
        return local
