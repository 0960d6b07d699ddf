"""This node's place in a job of several: the channel to the other supervisors, the file
server that lets them fetch the shards published here, and who decides (the head's
planner, or a member's relay to it). Set up by the shell (loop.py) before the job starts.
"""
from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..options import Options
from .channel import Channel
from .head import Head
from .member import Member
from .transfer import FileServer


GOODBYE_WAIT_S = 5.0     # the head, for its members' goodbyes once the job is over


@dataclass
class Cluster:
    channel: Channel
    server: FileServer
    brain: Any

    def close(self) -> None:
        """A member says goodbye once its threads are out of the store; the head waits
        for every live member's goodbye (bounded) before its store goes: a member then
        reads the head's last words (Finish) and never finds the store gone under it."""
        self.server.close()
        if self.channel.is_head:
            self.brain.await_goodbyes(GOODBYE_WAIT_S)
            self.channel.close()
        else:
            self.channel.close(farewell={"k": "bye", "inc": self.brain.inc})


def join(opts: Options, root: Path, log: Callable[[str], None]) -> Cluster:
    """Open the channel (the head hosts the store; a member waits for it, bounded by
    ``join_timeout_s``), start serving this node's published shards, make the brain."""
    topo = opts.topology
    channel = Channel.open(topo, connect_timeout_s=opts.join_timeout_s)
    try:
        token = secrets.token_hex(32)
        server = FileServer(root, bytes.fromhex(token), host=local_address(topo.store_host,
                                                                           topo.store_port))
        server.start()
    except BaseException:
        channel.close()
        raise
    files = (server.address[0], server.address[1], token)
    incarnation = secrets.token_hex(8)
    kind = Head if channel.is_head else Member
    return Cluster(channel, server, kind(opts, channel, root, incarnation, files, log=log))


def local_address(host: str, port: int) -> str:
    """The address of this machine that the store's host reaches it by (the interface a
    connection to it leaves from); no packet is sent."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1" if family == socket.AF_INET else "::1"
