"""Recovery across nodes: where the time goes when a member node's rank dies, and how the
head's detection and decision grow with the number of nodes.

Part 1, timeline. Two ``jitc supervise -- torchrun --nnodes 2 --node-rank k ...`` on
127.0.0.1, each with its own run dir (no mount namespace: the nodes could read each
other's disks, but nothing in jitc looks), 2 ranks each, a DDP job of a Linear stack with
AdamW whose registered state is ``--mb`` MiB (weights + two moments). Rank 3 (node 1) is
crashed at ``--fault-step``: the shard's writers are the replicas on node 0 (ranks 0, 1
against node 1's rank 2), so node 1 must fetch the state from node 0's file server before
it restarts. From the head's and the member's events.jsonl (wall-clock ``ts``, one
machine) and the ranks' own trace:

  detect     fault_injected -> root-cause failure_detected (the head's clock: both are
             stamped when the report reaches the head)
  decide     -> first snapshot_requested (the settle window, then QUERY/STATE)
  snapshot   -> snapshot_done (and its bandwidth)
  stop       job_stopped ``seconds`` on each node
  restart    restart -> start of attempt 1 on each node (node 1's includes the fetch)
  transfer   node 1's state_fetched: seconds, bytes, bandwidth; and as a ratio of a raw
             loopback TCP copy of the same files (transfer_bandwidth.py's raw_copy) done
             in the same run, once the job is over
  first step start -> the node's last ``resumed`` (launch + init + restore); and from
             the ranks' own trace (the slowest rank of the node): restart -> the script's
             code runs (node 1: includes the fetch), -> ready (imports, process group, model),
             -> protect() returned (restore), -> first step done
  WARNING: the fetch runs while node 0's ranks start again on the same 2 CPUs; the raw
  copy runs once the job is over, on a quieter machine: the ratio is pessimistic.

Part 2, scaling (simulated nodes, one process). A head ``Channel`` (the real TCPStore on
127.0.0.1) with the real ``Head`` (router + planner) driven the way loop.py drives it
(select on its channel for ``tick_s``, drain, tick), and N-1 member ``Channel`` s, each
with the real ``Member``, all in this process. Every node has ``--ranks-per-node`` ranks
that say Hello and Progress; then the last member sends one rank's crash (``Failed``):

  detect     member.feed(Failed) -> the head's planner holds the failure
  decide     -> QUERY to every healthy rank pushed onto the channels (includes the planner's
             settle window, ``settle_s``; ``decide - settle`` is the head's own work)
  reach      -> every member has drained the QUERYs for its ranks

and, per N, a member whose channel is closed (its beats stop) until the head's router
declares it lost (expected: about ``node_timeout_s``, less up to one heartbeat). One
process and 2 CPUs: the members' threads and the head share the GIL, so the absolute
times are pessimistic; the curve is the point.

    PYTHONPATH=. python benchmarks/multinode_recovery.py            # ~3 min on 2 CPUs
    PYTHONPATH=. python benchmarks/multinode_recovery.py --quick    # one run, nodes 2,8,32: ~1 min
    ... [--mb 256] [--runs 3] [--nodes 2,4,8,16,32] [--repeats 7] [--part 1|2]

Prints a table and one summary line per part; writes benchmarks/results/
multinode_recovery.json (``timeline`` and ``scaling``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import queue
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

WIDTH = 1024            # the Linear stack's width; --mb sets its depth
PER_NODE = 2
FAULT_RANK = 3          # on node 1: its node keeps one healthy replica, node 0 two
STATE_BYTES_PER_PARAM = 12      # fp32 weight + AdamW exp_avg + exp_avg_sq
JOIN_GAP_S = 0.25       # between simulated nodes' Channel.open (see SimCluster)


# -- the job (worker mode: torchrun runs this file with --train) -------------------------
def train(args: argparse.Namespace) -> None:
    # Not the process's creation time: the standby launcher forks its workers ahead of
    # the restart, so that time can precede the restart event.
    ts_begin = time.time()
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    import jitc
    from jitc import env

    torch.set_num_threads(1)
    jitc.init_process_group("gloo")
    rank = dist.get_rank()
    attempt = int(os.environ.get(env.ATTEMPT, "0"))

    def trace(event: str, **fields: Any) -> None:
        line = json.dumps({"ts": time.time(), "event": event, "rank": rank, "attempt": attempt,
                           **fields})
        with open(args.trace, "a") as f:           # one short O_APPEND write per line
            f.write(line + "\n")

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers_for(args.mb))])
    ddp = DDP(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    trace("ready", ts_begin=ts_begin)
    session = jitc.protect(ddp, optimizer, seed=0)
    trace("protected", step=session.start_step)
    first = True
    for step in session.steps(args.steps):
        loss = ddp(torch.randn(4, WIDTH)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if first:
            trace("first_step_done", step=step)
            first = False
    dist.destroy_process_group()


def layers_for(mb: int) -> int:
    per_layer = (WIDTH * WIDTH + WIDTH) * STATE_BYTES_PER_PARAM
    return max(1, round((mb << 20) / per_layer))


# -- part 1: two node supervisors --------------------------------------------------------
def free_port_pair() -> int:
    """A port P with P and P+1 free (torchrun's rendezvous, jitc's coordination store)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1 >= 65535:
            continue
        try:
            with socket.socket() as t:
                t.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def clean_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in list(env):
        if name.startswith("JITC_") or name == "LD_PRELOAD":
            env.pop(name)
    return env


def lines(path: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except OSError:
        return []


def node_command(args, tmp: Path, node: int, port: int) -> list[str]:
    return [str(BIN / "jitc"), "supervise", "--run-dir", str(tmp / f"node{node}"),
            "--hang-timeout", "120", "--max-restarts", "2",
            "--inject", f"crash@rank={FAULT_RANK},step={args.fault_step}", "--",
            str(BIN / "torchrun"), "--nnodes", "2", "--node-rank", str(node),
            "--master-addr", "127.0.0.1", "--master-port", str(port),
            "--nproc-per-node", str(PER_NODE), "--monitor-interval", "0.1",
            str(Path(__file__).resolve()), "--train", "--mb", str(args.mb),
            "--steps", str(args.fault_step + 3), "--trace", str(tmp / f"trace{node}.jsonl")]


def one_run(args, tmp: Path) -> dict[str, Any]:
    port = free_port_pair()
    procs, logs = [], []
    t0 = time.time()
    try:
        for node in (0, 1):
            log = open(tmp / f"node{node}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(node_command(args, tmp, node, port), env=clean_env(),
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        codes = [p.wait(timeout=args.run_timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        for log in logs:
            log.close()
    wall = time.time() - t0
    if codes != [0, 0]:
        tails = "\n".join(f"--- node {n} ---\n{(tmp / f'node{n}.log').read_text()[-3000:]}"
                          for n in (0, 1))
        raise SystemExit(f"run failed, exit codes {codes}:\n{tails}")
    result = timeline(tmp)
    result["run_wall_s"] = wall
    result["raw"] = raw_copy_of_fetched(tmp, result["transfer"]["bytes"], args.raw_rounds)
    return result


def first(events: list[dict], name: str, **match: Any) -> dict:
    for e in events:
        if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
            return e
    raise SystemExit(f"no {name} {match} in the log")


def timeline(tmp: Path) -> dict[str, Any]:
    head, member = lines(tmp / "node0" / "events.jsonl"), lines(tmp / "node1" / "events.jsonl")
    traces = {n: lines(tmp / f"trace{n}.jsonl") for n in (0, 1)}
    fault = first(head, "fault_injected")
    detected = first(head, "failure_detected", root_cause=True)
    requested, done = first(head, "snapshot_requested"), first(head, "snapshot_done")
    restart = first(head, "restart")
    fetched = first(member, "state_fetched")
    out: dict[str, Any] = {
        "root_cause": {"rank": detected.get("rank"), "node": detected.get("node")},
        "detect_s": detected["ts"] - fault["ts"],
        "decide_s": requested["ts"] - detected["ts"],
        "snapshot_s": done["ts"] - requested["ts"],
        "snapshot_bytes": done.get("bytes"),
        "fault_to_restart_s": restart["ts"] - fault["ts"],
        "nodes": {},
    }
    last_done = 0.0
    for n, events in ((0, head), (1, member)):
        start = first(events, "start", attempt=1)
        ranks = range(n * PER_NODE, (n + 1) * PER_NODE)
        resumed = [e for e in head if e["event"] == "resumed" and e.get("rank") in ranks]
        tr = [e for e in traces[n] if e["attempt"] == 1]
        ready = [e for e in tr if e["event"] == "ready"]
        prot = [e for e in tr if e["event"] == "protected"]
        step1 = [e for e in tr if e["event"] == "first_step_done"]
        if not (resumed and ready and prot and step1):
            raise SystemExit(f"node {n}: attempt 1 left no resumed/trace records")
        last_done = max(last_done, max(e["ts"] for e in step1))
        out["nodes"][n] = {
            "stop_s": first(events, "job_stopped")["seconds"],
            "restart_to_start_s": start["ts"] - restart["ts"],
            "start_to_resumed_s": max(e["ts"] for e in resumed) - start["ts"],
            # From restart, not from `start`: that event is written after the next
            # standby launcher is spawned, when the ranks may already be running.
            "launch_s": max(e["ts_begin"] for e in ready) - restart["ts"],
            "init_s": max(e["ts"] for e in ready) - max(e["ts_begin"] for e in ready),
            "restore_s": max(e["ts"] for e in prot) - max(e["ts"] for e in ready),
            "first_step_s": max(e["ts"] for e in step1) - max(e["ts"] for e in prot),
            "resumed_step": resumed[0]["step"], "replayed": resumed[0].get("replayed"),
            "launcher": start.get("launcher"),
        }
    out["transfer"] = {"seconds": fetched["seconds"], "bytes": fetched["bytes"],
                       "files": fetched["files"],
                       "GBps": fetched["bytes"] / fetched["seconds"] / 1e9}
    out["nodes"][1]["restart_to_start_minus_fetch_s"] = (
        out["nodes"][1]["restart_to_start_s"] - fetched["seconds"])
    out["fault_to_first_step_s"] = last_done - fault["ts"]
    return out


def raw_copy_of_fetched(tmp: Path, nbytes: int, rounds: int) -> dict[str, Any]:
    """The yardstick: node 1's fetched files sent again over loopback TCP, raw
    (transfer_bandwidth.raw_copy: sendfile -> recv_into -> write, fsync)."""
    from transfer_bandwidth import RawServer, raw_copy
    snaps = tmp / "node1" / "snapshots"
    files = sorted(p for p in snaps.rglob("*") if p.is_file() and not p.is_symlink())
    sizes = [p.stat().st_size for p in files]
    server = RawServer(files)
    times = []
    try:
        for r in range(rounds):
            dest = tmp / f"raw{r}"
            times.append(raw_copy(server, sizes, dest))
            shutil.rmtree(dest)
    finally:
        server.close()
    copied = sum(sizes)
    return {"bytes": copied, "files": len(files), "samples_s": times,
            "median_s": statistics.median(times),
            "GBps": copied / statistics.median(times) / 1e9,
            "same_bytes_as_fetch": copied == nbytes}


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def part1(args) -> dict[str, Any]:
    runs = []
    build = ROOT / "build"
    build.mkdir(exist_ok=True)
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(dir=build, prefix="multinode-") as tmp:
            r = one_run(args, Path(tmp))
        r["transfer"]["ratio_to_raw"] = r["raw"]["median_s"] / r["transfer"]["seconds"]
        runs.append(r)
        print(f"  run {i + 1}/{args.runs}: fault -> first step {r['fault_to_first_step_s']:.2f} s, "
              f"fetch {r['transfer']['bytes'] / 2**20:.0f} MiB in {r['transfer']['seconds']:.2f} s "
              f"({r['raw']['median_s']:.2f} s raw)", flush=True)
    rows: list[tuple[str, list[float]]] = [
        ("detect", [r["detect_s"] for r in runs]),
        ("decide", [r["decide_s"] for r in runs]),
        ("snapshot", [r["snapshot_s"] for r in runs]),
    ]
    for n in (0, 1):
        rows.append((f"stop node {n}", [r["nodes"][n]["stop_s"] for r in runs]))
    for n in (0, 1):
        rows.append((f"restart->start node {n}", [r["nodes"][n]["restart_to_start_s"] for r in runs]))
    rows += [("  of which fetch (node 1)", [r["transfer"]["seconds"] for r in runs]),
             ("  raw copy, same bytes", [r["raw"]["median_s"] for r in runs])]
    for n in (0, 1):
        rows.append((f"start->resumed node {n}", [r["nodes"][n]["start_to_resumed_s"] for r in runs]))
        rows.append((f"restart->script runs node {n}", [r["nodes"][n]["launch_s"] for r in runs]))
        rows.append((f"  script->ready node {n}", [r["nodes"][n]["init_s"] for r in runs]))
        rows.append((f"  ready->protect() done node {n}", [r["nodes"][n]["restore_s"] for r in runs]))
        rows.append((f"  protect()->first step node {n}", [r["nodes"][n]["first_step_s"] for r in runs]))
    rows += [("fault -> restart", [r["fault_to_restart_s"] for r in runs]),
             ("fault -> first step", [r["fault_to_first_step_s"] for r in runs])]
    print(f"\n{'phase (s)':<30} {'median':>8} {'min':>8} {'max':>8}")
    for name, xs in rows:
        print(f"{name:<30} {statistics.median(xs):8.3f} {min(xs):8.3f} {max(xs):8.3f}")
    phases = {name.strip(): summarize(xs) for name, xs in rows}
    gbps = summarize([r["transfer"]["GBps"] for r in runs])
    ratio = summarize([r["transfer"]["ratio_to_raw"] for r in runs])
    snap_gbps = summarize([r["snapshot_bytes"] / r["snapshot_s"] / 1e9 for r in runs])
    return {"mb": args.mb, "layers": layers_for(args.mb), "width": WIDTH, "nodes": 2,
            "ranks_per_node": PER_NODE, "fault": f"crash@rank={FAULT_RANK},step={args.fault_step}",
            "state_bytes": runs[0]["snapshot_bytes"], "phases_s": phases,
            "transfer_GBps": gbps, "transfer_ratio_to_raw": ratio, "snapshot_GBps": snap_gbps,
            "runs": runs}


# -- part 2: N simulated nodes in this process -------------------------------------------
class HeadLoop(threading.Thread):
    """loop.py's pass over the head's channel: select for tick_s, drain, tick; plus calls
    handed in from the main thread (the Head is used from this thread only)."""

    def __init__(self, head, tick_s: float):
        super().__init__(daemon=True, name="bench-head")
        self.head, self.tick_s = head, tick_s
        self.calls: queue.Queue[Callable[[Any, float], None]] = queue.Queue()
        self.stop = threading.Event()
        self.detected_at: float | None = None      # the planner holds a failure
        self.queried_at: float | None = None       # its QUERYs are out on the channels
        self.lost_at: dict[int, float] = {}        # node -> declared lost

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.head.fileno(), selectors.EVENT_READ)
        while not self.stop.is_set():
            ready = sel.select(self.tick_s)
            now = time.monotonic()
            while True:
                try:
                    self.calls.get_nowait()(self.head, now)
                except queue.Empty:
                    break
            if ready:
                self.head.drain(now)
                self._observe()
            self.head.tick(now)
            self._observe()
        sel.close()

    def _observe(self) -> None:
        t = time.perf_counter()
        p = self.head.planner
        if self.detected_at is None and p.failures:
            self.detected_at = t
        if self.queried_at is None and p.recovery is not None and p.recovery._asked:
            self.queried_at = t
        for n, info in self.head.router.nodes.items():
            if not info.alive and n not in self.lost_at:
                self.lost_at[n] = t


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.002)


class SimCluster:
    """N channels on one TCPStore: node 0 hosts, 1..N-1 connect."""

    def __init__(self, n: int, tmp: Path, args):
        from jitc.supervisor.cluster.channel import Channel
        from jitc.supervisor.cluster.topology import Topology
        self.n, self.tmp, self.args = n, tmp, args
        port = free_port_pair()
        self.topo = Topology(nnodes=n, node_rank=0, backend="static", rdzv_host="127.0.0.1",
                             rdzv_port=port, store_host="127.0.0.1", store_port=port + 1,
                             job_id="bench")
        self.Channel = Channel
        self.channels = [Channel.open(self.topo)]
        for k in range(1, n):
            # WARNING: spaced out on purpose. Channels opened back to back (here: the
            # 8th; across processes: 15 members at one instant) stall the head's store
            # for its 5 s operation timeout: joins fail and joined members declare the
            # head lost. A defect of the coordination store, not what this part measures.
            time.sleep(JOIN_GAP_S)
            self.channels.append(self.open(k))
        self.check()

    def check(self) -> None:
        lost = [(k, ch.lost) for k, ch in enumerate(self.channels) if ch.lost]
        if lost:
            raise SystemExit(f"N={self.n}: channels lost: {lost}")

    def open(self, k: int):
        return self.Channel.open(dataclasses.replace(self.topo, node_rank=k))

    def options(self, node: int):
        from jitc._lib import lib_path
        from jitc.supervisor.options import Options
        run_dir = self.tmp / f"node{node}"
        run_dir.mkdir(exist_ok=True)
        return Options(command=("true",), run_dir=run_dir, lib=Path(lib_path()),
                       topology=dataclasses.replace(self.topo, node_rank=node),
                       node_timeout_s=self.args.node_timeout)

    def close(self) -> None:
        for ch in reversed(self.channels):       # the head's store goes last
            ch.close()


def start_job(sim: SimCluster, per_node: int):
    """A fresh Head and Members on the open channels, every node joined, attempt 0
    running, every rank's Hello and Progress in the head's planner."""
    from jitc.supervisor.cluster.head import Head
    from jitc.supervisor.cluster.member import Member
    from jitc.supervisor.planner import commands as C
    from jitc.supervisor.planner import reports as R
    for ch in sim.channels:
        ch.drain()                                # what an earlier repeat left
    quiet = lambda line: None                     # noqa: E731
    files = ("127.0.0.1", 1, "00" * 32)
    inc = os.urandom(8).hex()
    head = Head(sim.options(0), sim.channels[0], sim.tmp / "node0" / "snapshots", f"h{inc}",
                files, log=quiet)
    loop = HeadLoop(head, head.planner.opts.tick_s)
    loop.start()
    members = [Member(sim.options(k), sim.channels[k], sim.tmp / f"node{k}" / "snapshots",
                      f"m{k}-{inc}", files, log=quiet) for k in range(1, sim.n)]
    wait_for(lambda: len(head.router.nodes) == sim.n, 30, "every node's join")
    world = sim.n * per_node
    now = time.monotonic

    def hello(rank: int) -> R.Hello:
        return R.Hello(rank, pid=10_000 + rank, world_size=world)

    def progress(rank: int) -> R.Progress:
        return R.Progress(rank, step=5, completed=4, phase="forward", step_time=0.2)

    def head_ranks(h, t):
        h.begin(t)
        h.feed(R.JobStarted(1), t)
        for r in range(per_node):
            h.feed(hello(r), t)
            h.feed(progress(r), t)
    loop.calls.put(head_ranks)
    started = set()
    sel = selectors.DefaultSelector()
    for m in members:
        sel.register(m.fileno(), selectors.EVENT_READ, m)
    deadline = time.monotonic() + 30
    while len(started) < len(members):
        if time.monotonic() > deadline:
            raise SystemExit("a member never got its StartJob")
        for key, _ in sel.select(0.05):
            m = key.data
            if any(isinstance(c, C.StartJob) for c in m.drain(now())) and m not in started:
                started.add(m)
                k = m.channel.node
                m.feed(R.JobStarted(1), now())
                for r in range(k * per_node, (k + 1) * per_node):
                    m.feed(hello(r), now())
                    m.feed(progress(r), now())
    sel.close()
    wait_for(lambda: len(head.planner.ranks) == world
             and all(i.step is not None for i in head.planner.ranks.values())
             and head.planner.state.name == "RUNNING", 30, "every rank's progress")
    return head, loop, members


def one_failure(sim: SimCluster, per_node: int) -> dict[str, float]:
    from jitc import failures
    from jitc.protocol import Msg
    from jitc.supervisor.classify import Failure
    from jitc.supervisor.planner import commands as C
    from jitc.supervisor.planner import reports as R
    sim.check()
    head, loop, members = start_job(sim, per_node)
    try:
        victim = members[-1]
        bad = victim.channel.node * per_node + per_node - 1
        want = {m: {r for r in range(m.channel.node * per_node, (m.channel.node + 1) * per_node)
                    if r != bad} for m in members}
        sel = selectors.DefaultSelector()
        for m in members:
            m.drain(time.monotonic())
            sel.register(m.fileno(), selectors.EVENT_READ, m)
        t0 = time.perf_counter()
        victim.feed(R.Failed(Failure(rank=bad, kind=failures.CRASH, ts=time.monotonic(), step=5,
                                     phase="forward")), time.monotonic())
        deadline = time.monotonic() + 30
        reached = None
        while reached is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"N={sim.n}: the QUERYs never reached every member")
            for key, _ in sel.select(0.05):
                m = key.data
                for c in m.drain(time.monotonic()):
                    if isinstance(c, C.Send) and c.type is Msg.QUERY:
                        want[m].discard(c.rank)
            if not any(want.values()):
                reached = time.perf_counter()
        sel.close()
        wait_for(lambda: loop.queried_at is not None, 10, "the head's QUERYs")
        detect = loop.detected_at - t0
        decide = loop.queried_at - loop.detected_at
        return {"detect_s": detect, "decide_s": decide,
                "decide_minus_settle_s": decide - head.planner.opts.settle_s,
                "reach_s": reached - loop.queried_at, "failure_to_reach_s": reached - t0}
    finally:
        loop.stop.set()
        loop.join(5)


def one_silence(sim: SimCluster, per_node: int) -> float:
    """Close the last member's channel (its beats stop); seconds until the head loses it."""
    sim.check()
    head, loop, members = start_job(sim, per_node)
    k = sim.n - 1
    try:
        t0 = time.perf_counter()
        sim.channels[k].close()
        wait_for(lambda: k in loop.lost_at, 3 * sim.args.node_timeout + 10, f"node {k} lost")
        return loop.lost_at[k] - t0
    finally:
        loop.stop.set()
        loop.join(5)
        time.sleep(JOIN_GAP_S)
        sim.channels[k] = sim.open(k)


def part2(args) -> dict[str, Any]:
    build = ROOT / "build"
    build.mkdir(exist_ok=True)
    curve = []
    print(f"\n{'nodes':>5} {'ranks':>5} {'detect ms':>10} {'decide ms':>10} {'-settle ms':>10} "
          f"{'reach ms':>9} {'hb loss s':>10}   (medians; decide includes settle_s)")
    for n in args.nodes:
        with tempfile.TemporaryDirectory(dir=build, prefix="multinode-sim-") as tmp:
            sim = SimCluster(n, Path(tmp), args)
            try:
                reps = [one_failure(sim, args.ranks_per_node) for _ in range(args.repeats)]
                silences = [one_silence(sim, args.ranks_per_node)
                            for _ in range(args.hb_repeats)]
            finally:
                sim.close()
        row = {"nodes": n, "ranks": n * args.ranks_per_node,
               **{key: summarize([r[key] for r in reps]) for key in reps[0]},
               "heartbeat_loss_s": summarize(silences)}
        curve.append(row)
        print(f"{n:5d} {row['ranks']:5d} {row['detect_s']['median'] * 1e3:10.2f} "
              f"{row['decide_s']['median'] * 1e3:10.1f} "
              f"{row['decide_minus_settle_s']['median'] * 1e3:10.1f} "
              f"{row['reach_s']['median'] * 1e3:9.2f} {row['heartbeat_loss_s']['median']:10.2f}",
              flush=True)
    return {"ranks_per_node": args.ranks_per_node, "repeats": args.repeats,
            "heartbeat_repeats": args.hb_repeats, "node_timeout_s": args.node_timeout,
            "settle_s": settle_s(), "tick_s": tick_s(), "join_gap_s": JOIN_GAP_S,
            "curve": curve}


def settle_s() -> float:
    from jitc.supervisor.options import Options
    return next(f.default for f in dataclasses.fields(Options) if f.name == "settle_s")


def tick_s() -> float:
    from jitc.supervisor.options import Options
    return next(f.default for f in dataclasses.fields(Options) if f.name == "tick_s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--trace", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--mb", type=int, default=256, help="registered state, MiB (default 256)")
    ap.add_argument("--runs", type=int, default=3, help="part 1 repeats (default 3)")
    ap.add_argument("--fault-step", type=int, default=3)
    ap.add_argument("--raw-rounds", type=int, default=3)
    ap.add_argument("--run-timeout", type=float, default=600)
    ap.add_argument("--nodes", default="2,4,8,16,32", help="part 2 node counts")
    ap.add_argument("--ranks-per-node", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7, help="part 2 failures per node count")
    ap.add_argument("--hb-repeats", type=int, default=2)
    ap.add_argument("--node-timeout", type=float, default=2.0)
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    ap.add_argument("--quick", action="store_true",
                    help="--mb 200 --runs 1, nodes 2,8,32, 3 repeats, 1 heartbeat loss each")
    ap.add_argument("--out", default=str(HERE / "results" / "multinode_recovery.json"))
    args = ap.parse_args()
    if args.train:
        train(args)
        return 0
    # c10d's own stderr lines (a C++ stack when a closed channel's client sees its store
    # go); read when torch loads, which part 1's imports do.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    if args.quick:
        args.mb, args.runs, args.nodes = 200, 1, "2,8,32"
        args.repeats, args.hb_repeats, args.raw_rounds = 3, 1, 1
    args.nodes = [int(x) for x in str(args.nodes).split(",")]
    result: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(),
                              "load_before": os.getloadavg()[0],
                              "command": " ".join(sys.argv[1:]) or "(defaults)"}
    out = Path(args.out)
    if out.exists():
        try:
            old = json.loads(out.read_text())      # a --part run keeps the other part's
            result.update({k: old[k] for k in ("timeline", "scaling") if k in old})
        except ValueError:
            pass
    if args.part in ("1", "both"):
        print(f"part 1: 2 nodes x {PER_NODE} ranks, {args.mb} MiB state, {args.runs} run(s)")
        t = result["timeline"] = part1(args)
        ph = t["phases_s"]
        print(f"PART 1: {t['state_bytes'] / 1e6:.0f} MB state, crash on node 1, median of "
              f"{args.runs}: detect {ph['detect']['median']:.3f} s, decide "
              f"{ph['decide']['median']:.3f}, snapshot {ph['snapshot']['median']:.2f} "
              f"({t['snapshot_GBps']['median']:.2f} GB/s), node 1 fetch "
              f"{ph['of which fetch (node 1)']['median']:.2f} s "
              f"({t['transfer_GBps']['median']:.2f} GB/s, "
              f"{t['transfer_ratio_to_raw']['median']:.2f} of raw loopback), fault -> first "
              f"step {ph['fault -> first step']['median']:.2f} s "
              f"(range {ph['fault -> first step']['min']:.2f}-{ph['fault -> first step']['max']:.2f})")
    if args.part in ("2", "both"):
        print(f"part 2: simulated nodes {args.nodes}, {args.ranks_per_node} ranks each")
        s = result["scaling"] = part2(args)
        c = s["curve"]
        print(f"PART 2: {c[0]['nodes']} -> {c[-1]['nodes']} nodes: detect "
              f"{c[0]['detect_s']['median'] * 1e3:.1f} -> {c[-1]['detect_s']['median'] * 1e3:.1f} ms, "
              f"decide beyond settle {c[0]['decide_minus_settle_s']['median'] * 1e3:.1f} -> "
              f"{c[-1]['decide_minus_settle_s']['median'] * 1e3:.1f} ms, QUERYs reach members "
              f"{c[0]['reach_s']['median'] * 1e3:.1f} -> {c[-1]['reach_s']['median'] * 1e3:.1f} ms; "
              f"heartbeat loss {c[0]['heartbeat_loss_s']['median']:.2f} -> "
              f"{c[-1]['heartbeat_loss_s']['median']:.2f} s (node timeout {args.node_timeout} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
