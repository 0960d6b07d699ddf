"""The supervisors' exchange: one inbox per node in torch's own TCPStore.

One ``jitc supervise`` per node; the head's hosts a ``torch.distributed.TCPStore`` that
lives across the job's restarts, and every supervisor (the head too) talks to it as a
client. Nothing received can run code: messages are dicts as strict JSON
(``jitc.protocol.loads``); an entry that is neither that nor a heartbeat is dropped and
counted in ``dropped``, never raised into the caller.

    ch = Channel.open(topo)          # hosts the store, or connects to the head's
    ch.send(HEAD, {...})             # onto node 0's inbox; ch.send(2, {...}) onto node 2's
    selector.register(ch, ...)       # readable when messages came, or the store was lost
    ch.drain() -> [dict, ...]        # in the order they were pushed
    ch.beats() -> {node: count}      # head only: heartbeats received from each node
    ch.lost -> str | None            # one line with the cause, once the store is gone
    ch.close()

Who hosts: static rendezvous, --node-rank 0 (a node 0 that cannot listen is refused:
another job's store or a second node 0 holds the port); c10d, the first supervisor on the
endpoint's host (torchrun's own rule for its store: ``_matches_machine_hostname``) to
listen on the port; the rest connect. The head is node 0; a c10d member takes its id from
the counter ``nodes`` (1, 2, ...), a static one is its --node-rank. Keys, under
``PrefixStore("jitc/<job_id>")`` (torch joins prefix and key with a "/"): ``q/<node>``, a
node's inbox (a queue), and ``nodes``.

Why heartbeats are inbox entries (``hb:<node>``), and why the silence is judged here: in
torch 2.13 a TCPStore client waits for its server's answers without any bound (``add``,
``get``, ``check``, the constructor's handshake, even a ``queue_pop`` whose timeout ran
out: it then asks the server to stop waiting and waits for that answer), so a stopped or
unplugged head hangs every call but ``queue_push``, which waits for nothing. Hence: every
node pushes a beat onto the head's inbox, the head onto its own and onto every node's it
heard from in the last ``QUIET_NODE_S``; the heartbeat thread, which only pushes, declares
the store lost when its reader has heard nothing for ``op_timeout_s``; close() shuts down
the sockets of a thread still stuck in a call, which then returns; open()'s calls run in
a helper thread, waited for ``op_timeout_s`` and unstuck the same way.

Threads: a reader (pops this node's inbox) and a heartbeat thread, each with its own store
client (TCPStore clients must not be shared between threads); the caller's send() has a
third, under a lock. ``fileno()`` is a pipe's read end, written for messages and for the
loss, like work.py's Worker.

WARNING: close() every channel before the interpreter exits (an atexit hook closes the
ones left open): a daemon thread that comes back from a store call while Python finalizes
can abort the process. c10d also logs to stderr by itself (not through Python's logging),
lines with a C++ stack when a client sees its server gone; ``TORCH_CPP_LOG_LEVEL``, read
when torch loads, silences it.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import random
import re
import socket
import stat
import threading
import time
import weakref
from collections import deque
from datetime import timedelta
from typing import Any, Callable

from torch import distributed as dist

from ...errors import JitcError, UsageError
from ...protocol import loads
from ..doorbell import Doorbell
from .topology import Topology

HEAD = "head"
QUIET_NODE_S = 60.0     # the head stops beating a node it has not heard from this long
PROBE_RETRY_S = 0.2     # between quiet connect attempts while the head is not up yet
UNSTICK_S = 1.0         # for a thread to return once its sockets are shut down
_BEAT = re.compile(rb"hb:(0|[1-9][0-9]{0,8})")
_WAKE = b""             # close()'s entry on its own inbox: wakes the reader to stop
_CAUSE_CHARS = 200
_OPEN: weakref.WeakSet[Channel] = weakref.WeakSet()

Sockets = dict[int, tuple[Any, Any]]     # fd -> (local address, peer address)


class Channel:
    """This supervisor's end of the exchange; made by ``open``."""

    @classmethod
    def open(cls, topo: Topology, *, connect_timeout_s: float = 60.0,
             op_timeout_s: float = 5.0, heartbeat_s: float = 0.5) -> Channel:
        """Host the job's store or connect to the head's, waiting ``connect_timeout_s``
        for it to listen (the head may start later). A store silent for ``op_timeout_s``
        is lost; heartbeats come every ``heartbeat_s``, which must be shorter."""
        if not (connect_timeout_s > 0 and 0 < heartbeat_s < op_timeout_s):
            raise UsageError(f"channel timeouts: need connect > 0 and 0 < heartbeat "
                             f"({heartbeat_s}) < operation ({op_timeout_s})")
        where = _hostport(topo.store_host, topo.store_port)
        listener = _listen(topo.store_port) if _may_host(topo) else None
        if listener is None and topo.backend == "static" and topo.node_rank == 0:
            raise UsageError(f"node 0 cannot host the coordination store on port "
                             f"{topo.store_port}: address in use (another job's store or "
                             "a second --node-rank 0 holds it)")
        deadline = time.monotonic() + connect_timeout_s
        if listener is None:
            _await_listener(topo.store_host, topo.store_port, connect_timeout_s)
        while True:
            before = _sockets_to(topo.store_port)
            try:
                stores = _within(op_timeout_s, f"the coordination store at {where}",
                                 lambda: _stores(topo, listener, op_timeout_s),
                                 lambda: _new_sockets(topo.store_port, before))
                break
            except JitcError:
                # Many nodes connecting at once can leave a handshake unanswered (seen
                # with torch 2.13 on a loaded machine): again, with jitter, until the
                # deadline.
                if listener is not None or time.monotonic() + op_timeout_s > deadline:
                    raise
                time.sleep(random.uniform(0.05, 0.5))
        return cls(topo, *stores, _new_sockets(topo.store_port, before),
                   op_timeout_s=op_timeout_s, heartbeat_s=heartbeat_s)

    def __init__(self, topo: Topology, base: dist.TCPStore, node: int,
                 clients: tuple[dist.PrefixStore, dist.PrefixStore, dist.PrefixStore],
                 sockets: Sockets, *, op_timeout_s: float, heartbeat_s: float):
        self.topo, self.node, self.is_head = topo, node, node == 0
        self.lost: str | None = None
        self.dropped = 0
        self._op_timeout_s, self._heartbeat_s = op_timeout_s, heartbeat_s
        self._where = _hostport(topo.store_host, topo.store_port)
        self._base = base            # the head's server lives exactly as long as this
        self._sockets = sockets      # this channel's client connections, to unstick them
        self._send_store, read_store, beat_store = clients
        self._send_lock = threading.Lock()
        self._inbox: deque[dict] = deque()
        self._beats: dict[int, int] = {}
        self._heard: dict[int, float] = {}     # node -> monotonic time of its last beat
        self._last_entry = time.monotonic()    # anything popped proves the store alive
        self._stop = threading.Event()
        self._closed = False
        self._bell = Doorbell()
        self._reader = threading.Thread(target=self._read_loop, args=(read_store,),
                                        name=f"jitc-channel-read-{node}", daemon=True)
        self._beater = threading.Thread(target=self._beat_loop, args=(beat_store,),
                                        name=f"jitc-channel-beat-{node}", daemon=True)
        self._tick(beat_store, self._last_entry)   # the head hears of us before open returns
        self._reader.start()
        self._beater.start()
        _OPEN.add(self)

    def fileno(self) -> int:
        return self._bell.fileno()

    def send(self, dest: int | str, msg: dict) -> None:
        """Push ``msg`` onto ``dest``'s inbox (``HEAD`` or a node id), from the caller's
        thread; a push waits for no answer. A dict that would not decode strictly raises
        here (ValueError/TypeError); once ``lost`` is set nothing is sent."""
        if self._closed:
            raise JitcError("send on a closed coordination channel")
        if type(msg) is not dict:
            raise TypeError(f"a channel message is a dict, not {type(msg).__name__}")
        payload = json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()
        loads(payload)           # what the receiver would drop fails here, at the sender
        node = _node_of(dest)
        with self._send_lock:
            self._push(self._send_store, node, payload)

    def drain(self) -> list[dict]:
        """The messages received since the last drain, in order."""
        self._bell.clear()
        out = []
        while self._inbox:
            out.append(self._inbox.popleft())
        return out

    def beats(self) -> dict[int, int]:
        """Head: how many heartbeats came from each node, itself included; members: {}."""
        return dict(self._beats) if self.is_head else {}

    def close(self, farewell: dict | None = None) -> None:
        """Stop both threads within op_timeout_s + UNSTICK_S; the head's store stops
        with it, and the members see ``lost``. ``farewell``: a last message for the head,
        pushed once this node's threads are out of the store (a head that closes its
        store on it then finds no call of this node waiting on it)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # A store already lost gets no grace: its threads are out, or stuck on it.
        deadline = time.monotonic() + (0.0 if self.lost else self._op_timeout_s)
        with self._send_lock:
            self._push(self._send_store, self.node, _WAKE)
        for thread in (self._reader, self._beater):
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._reader.is_alive() or self._beater.is_alive():
            _shut_down(self._sockets)        # a silent store: end the calls stuck on it
            for thread in (self._reader, self._beater):
                thread.join(UNSTICK_S)
        elif farewell is not None and self.lost is None and not self.is_head:
            payload = json.dumps(farewell, separators=(",", ":"), allow_nan=False).encode()
            with self._send_lock:
                self._push(self._send_store, 0, payload)
        self._bell.close()
        self._send_store = self._base = None
        _OPEN.discard(self)

    # -- threads --------------------------------------------------------------------

    def _read_loop(self, store: dist.PrefixStore) -> None:
        key = f"q/{self.node}"
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                raw = store.queue_pop(key)
            except dist.DistStoreError as e:
                if time.monotonic() - began < self._op_timeout_s / 2:
                    self._lose(e)     # not the wait running out: never spin on it
                    return
                continue              # the wait ran out; the heartbeat judges silence
            except (RuntimeError, OSError) as e:  # DistNetworkError: the connection
                self._lose(e)
                return
            if not self._stop.is_set():
                self._take(raw, time.monotonic())

    def _take(self, raw: bytes, now: float) -> None:
        """One entry of this node's inbox: a heartbeat, a message, or garbage."""
        self._last_entry = now
        beat = _BEAT.fullmatch(raw)
        if beat is not None:
            node = int(beat.group(1))
            self._beats[node] = self._beats.get(node, 0) + 1
            self._heard[node] = now
            return
        try:
            msg = loads(raw)
        except (ValueError, RecursionError):    # UnicodeDecodeError is a ValueError
            msg = None
        if type(msg) is not dict:
            self.dropped += 1
            return
        self._inbox.append(msg)
        self._notify()

    def _beat_loop(self, store: dist.PrefixStore) -> None:
        while not self._stop.wait(self._heartbeat_s) and self.lost is None:
            self._tick(store, time.monotonic())

    def _tick(self, store: dist.PrefixStore, now: float) -> None:
        """One heartbeat: judge the store's silence, then beat onto the head's inbox
        (the head: also onto every node's it heard from within QUIET_NODE_S)."""
        if now - self._last_entry > self._op_timeout_s:
            self._lose(None, f"nothing came for {self._op_timeout_s:g} s")
            return
        beat = f"hb:{self.node}".encode()
        to = [0]
        if self.is_head:
            to += [n for n, t in list(self._heard.items()) if n != 0 and now - t < QUIET_NODE_S]
        for node in to:
            self._push(store, node, beat)

    def _push(self, store: dist.PrefixStore, node: int, payload: bytes) -> None:
        """Onto ``node``'s inbox through ``store``, a client only this thread uses."""
        if self.lost is not None:
            return                 # a silent store would only fill the socket's buffer
        try:
            store.queue_push(f"q/{node}", payload)
        except (RuntimeError, OSError) as e:     # DistError is a RuntimeError
            self._lose(e)

    def _lose(self, e: BaseException | None, why: str | None = None) -> None:
        if self._stop.is_set() or self.lost is not None:
            return                 # our own close(), or already told
        cause = why or _first_line(e)
        if self.is_head:
            self.lost = f"the coordination store at {self._where} stopped answering: {cause}"
        else:
            self.lost = f"lost the head's coordination store at {self._where}: {cause}"
        self._notify()

    def _notify(self) -> None:
        self._bell.ring()


@atexit.register
def _close_left_open() -> None:
    for ch in sorted(_OPEN, key=lambda ch: ch.is_head):    # a head's store goes last
        ch.close()


def _stores(topo: Topology, listener: socket.socket | None, op_timeout_s: float):
    """(base store, this node's id, (send, read, beat) clients): calls that wait for the
    server's answer without a bound, so ``open`` runs this in ``_within``."""
    op = timedelta(seconds=op_timeout_s)
    if listener is not None:     # TCPStore takes the socket and closes it when it stops
        base = dist.TCPStore("127.0.0.1", topo.store_port, is_master=True, timeout=op,
                             wait_for_workers=False, master_listen_fd=listener.detach())
        node = 0                 # (its own client goes over loopback: every listener has it)
    else:
        base = dist.TCPStore(topo.store_host, topo.store_port, is_master=False, timeout=op)
        if topo.backend == "static":
            node = int(topo.node_rank)
        else:
            node = int(_prefixed(topo, base).add("nodes", 1))
    return base, node, (_prefixed(topo, base), _clone(topo, base, op), _clone(topo, base, op))


def _within(timeout_s: float, what: str, fn: Callable[[], Any],
            stuck: Callable[[], Sockets]) -> Any:
    """``fn()`` in a helper thread, waited for ``timeout_s``; ``JitcError`` (one line)
    when it raised a store error or did not finish (then the sockets ``stuck()`` names
    are shut down, so that its call returns)."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:      # handed to the caller below
            box.append((False, e))
    helper = threading.Thread(target=run, name="jitc-channel-open", daemon=True)
    helper.start()
    helper.join(timeout_s)
    if not box:
        _shut_down(stuck())
        helper.join(UNSTICK_S)
        raise JitcError(f"{what} did not answer within {timeout_s:g} s")
    ok, value = box[0]
    if ok:
        return value
    if isinstance(value, (RuntimeError, OSError)):
        raise JitcError(f"{what} failed: {_first_line(value)}") from None
    raise value


def _sockets_to(port: int) -> Sockets:
    """This process's TCP connections whose peer listens on ``port`` (Linux /proc)."""
    found: Sockets = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
            try:
                inet = sock.family in (socket.AF_INET, socket.AF_INET6)
                ends = (sock.getsockname(), sock.getpeername()) if inet else None
            finally:
                sock.detach()               # the fd stays its owner's
        except OSError:                     # gone meanwhile, or not connected
            continue
        if ends is not None and sock.type == socket.SOCK_STREAM and ends[1][1] == port:
            found[fd] = ends
    return found


def _new_sockets(port: int, before: Sockets) -> Sockets:
    return {fd: ends for fd, ends in _sockets_to(port).items() if before.get(fd) != ends}


def _shut_down(sockets: Sockets) -> None:
    """Shut down (not close: the fds stay their owners') the connections that are still
    as recorded; a call blocked on one returns with an error."""
    now: Sockets = {}
    for port in {peer[1] for _, peer in sockets.values()}:
        now.update(_sockets_to(port))
    for fd, ends in sockets.items():
        if now.get(fd) != ends:
            continue                        # closed since, or the fd is someone else's
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()


def _node_of(dest: int | str) -> int:
    if dest == HEAD:
        return 0
    if type(dest) is int and dest >= 0:
        return dest
    raise ValueError(f"a channel destination is {HEAD!r} or a node id, not {dest!r}")


def _may_host(topo: Topology) -> bool:
    if topo.backend == "static":
        return topo.node_rank == 0
    from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname
    return _matches_machine_hostname(topo.store_host)


def _listen(port: int) -> socket.socket | None:
    """A socket listening on every address at ``port``; None when the port is taken."""
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6,
                                        dualstack_ipv6=True)
        return socket.create_server(("", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return None
        raise JitcError(f"cannot listen on port {port} for the coordination store: "
                        f"{e.strerror}") from None


def _await_listener(host: str, port: int, timeout_s: float) -> None:
    """Wait, quietly, until something listens at host:port (TCPStore's own connect
    retries log every try to stderr); ``JitcError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection((host, port), timeout=max(0.1, min(1.0, left))).close()
            return
        except OSError as e:
            cause = e.strerror or type(e).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            raise JitcError(f"no coordination store at {_hostport(host, port)} after "
                            f"{timeout_s:g} s ({cause}): is the head node's supervisor up?")
        time.sleep(min(PROBE_RETRY_S, left))


def _prefixed(topo: Topology, store: dist.Store) -> dist.PrefixStore:
    return dist.PrefixStore(f"jitc/{topo.job_id}", store)


def _clone(topo: Topology, base: dist.TCPStore, op: timedelta) -> dist.PrefixStore:
    """A client of its own for one thread."""
    store = base.clone()
    store.set_timeout(op)
    return _prefixed(topo, store)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _first_line(e: BaseException | None) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:_CAUSE_CHARS]
