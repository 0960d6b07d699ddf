"""CheckFree convergence experiment: recovery strategies under the same failures.

Why this exists: the CheckFree paper claims that rebuilding a lost stage from its
neighbours reaches a target loss sooner than rolling back to a periodic checkpoint at
moderate failure rates. This script checks that claim at small scale, on CPU, as an
in-process simulation of a pipeline (stages are modules run in sequence; a failure
wipes a stage's weights and optimizer state, then the strategy rebuilds it).

Strategies, all facing the trace from failure_trace.py for a given (rate, seed):

* ``no_failures``: the trace is ignored (the ideal).
* ``checkfree``: an intermediate stage is rebuilt by jitc.checkfree.rebuild_stage
  (fresh optimizer, lr x1.1); a lost edge stage cannot be, so the job falls back to the
  periodic safety net (plan_recovery decides, exactly as jitc would).
* ``checkfree_plus``: trained with the swap schedule; lost edge stages are copied
  from their neighbour; intermediate ones merged; safety net as above.
* ``rollback``: every failure restores the whole job from the last periodic
  checkpoint (every ``--ckpt-every`` iterations) and replays from there.
* ``redundant``: redundant computation (each stage also holds its neighbour's work)
  loses no state, so its loss trajectory *is* the no-failure one; it pays a
  per-iteration time factor instead (cost model below).

Cost model for the modelled wall-clock, in units of one fault-free iteration:
* an iteration costs 1; with redundant computation 1 + ``--redundant-overhead``.
  The default 0.18 is derived from the paper's figures in REFERENCES.md: redundant
  computation took 420 h regardless of failure rate while CheckFree+ took 355 h at 5%,
  so the fault-free iteration is at most 355/420 of a redundant one: 420/355 = 1.18 is
  a *lower bound* on the overhead (it favours redundancy).
* saving a periodic checkpoint costs ``--ckpt-cost`` (default 2);
* every failure stalls the job ``--restart-cost`` (default 5) while a replacement
  joins, for every strategy except redundant computation (which continues).

Iterations to target: the target is the held-out loss the no-failure run reaches at
80% of its iterations; each strategy is timed at its first evaluation at or below it,
in executed iterations (slots, replays included) and in modelled wall-clock.

    python benchmarks/checkfree_convergence.py --quick
writes benchmarks/results/checkfree_convergence.json and .png and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import failure_trace  # noqa: E402
from optional_deps import require  # noqa: E402
import llama_tiny as L  # noqa: E402
from jitc.checkfree import (Action, GradNormRecorder, LrRule, StageStatus,  # noqa: E402
                            plan_recovery, rebuild_edge_stage, rebuild_stage, restart_optimizer, stage_order)
from jitc.checkfree.schedule import EdgeLayout  # noqa: E402
from jitc.errors import RecoveryError  # noqa: E402

# no_failures_plus: the swap schedule without failures, to separate its own cost from recovery.
STRATEGIES = ("no_failures", "no_failures_plus", "checkfree", "checkfree_plus", "rollback", "redundant")


@dataclass(frozen=True)
class Setup:
    stages: int = 6
    layers_per_stage: int = 1
    dim: int = 64
    iterations: int = 300
    microbatches: int = 2
    microbatch_size: int = 4
    lr: float = 3e-3
    warmup: int = 20
    clip: float = 1.0
    lr_factor: float = 1.1
    ckpt_every: int = 50
    ckpt_cost: float = 2.0
    restart_cost: float = 5.0
    redundant_overhead: float = 0.18
    eval_every: int = 10
    eval_batch: int = 32
    max_slots_factor: float = 2.0
    target_fraction: float = 0.8


class Sim:
    """The pipeline in one process: per-stage modules, optimizers, schedulers, norms."""

    def __init__(self, setup: Setup, plus: bool, seed: int, data: torch.Tensor):
        self.su, self.plus, self.seed = setup, plus, seed
        self.cfg = L.Config(dim=setup.dim, layers_per_stage=setup.layers_per_stage, hidden=2 * setup.dim)
        self.edges = EdgeLayout(setup.stages, plus)
        split = int(len(data) * 0.9)
        self.train_data, self.eval_data = data[:split], data[split:]
        self.eval_batch = L.batch(self.eval_data, setup.eval_batch, self.cfg.seq, torch.Generator().manual_seed(12345))
        self.stages = [self._new_stage(s).init_weights(seed, s) for s in range(setup.stages)]
        self.opts, self.scheds = [], []
        for st in self.stages:
            o, sc = restart_optimizer(st.parameters(), self._make_opt, step=0,
                                      make_scheduler=self._make_sched, rule=LrRule(1.0))
            self.opts.append(o)
            self.scheds.append(sc)
        self.norms = [GradNormRecorder(st) for st in self.stages]
        self.it = 0

    def _new_stage(self, s: int) -> L.Stage:
        return L.Stage(self.cfg, embed=self.edges.holds_embedding(s), head=self.edges.holds_head(s))

    def _make_opt(self, params):
        return torch.optim.AdamW(params, lr=self.su.lr, weight_decay=0.0)

    def _make_sched(self, opt):
        w = self.su.warmup
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / w))

    # -- one training iteration -------------------------------------------------------
    def step(self) -> float:
        su, S = self.su, self.su.stages
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.it * 1009)
        xb, yb = L.batch(self.train_data, su.microbatches * su.microbatch_size, self.cfg.seq, gen)
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        total = 0.0
        for m, (x, y) in enumerate(zip(xb.chunk(su.microbatches), yb.chunk(su.microbatches))):
            order = stage_order(S, m, self.plus)
            h = x
            for pos, s in enumerate(order):
                h = self.stages[s](h, first=pos == 0, last=pos == S - 1)
            loss = F.cross_entropy(h.reshape(-1, L.VOCAB), y.reshape(-1)) / su.microbatches
            loss.backward()
            total += loss.item()
        if self.plus:
            self._sum_edge_grads()
        for s, st in enumerate(self.stages):
            self.norms[s].record()   # before clipping: the CheckFree weight
            self._clip(st)
            self.opts[s].step()
            self.scheds[s].step()
            self.norms[s].commit(self.it)
        self.it += 1
        return total

    def _sum_edge_grads(self) -> None:
        """Both copies of the embedding (head) apply the summed gradient: they stay equal."""
        for attr, holders in (("embed", self.edges.embedding_holders), ("head", self.edges.head_holders)):
            mods = [getattr(self.stages[s], attr) for s in holders]
            for ps in zip(*(m.parameters() for m in mods)):
                g = sum(p.grad if p.grad is not None else torch.zeros_like(p) for p in ps)
                for p in ps:
                    p.grad = g.clone()

    def _clip(self, st: L.Stage) -> None:
        if self.plus:   # edge copies clipped on their own, identically on both holders
            torch.nn.utils.clip_grad_norm_(list(st.body_parameters()), self.su.clip)
            edge = list(st.edge_parameters())
            if edge:
                torch.nn.utils.clip_grad_norm_(edge, self.su.clip)
        else:
            torch.nn.utils.clip_grad_norm_(st.parameters(), self.su.clip)

    @torch.no_grad()
    def eval_loss(self) -> float:
        x, y = self.eval_batch
        h = x
        for pos, st in enumerate(self.stages):
            h = st(h, first=pos == 0, last=pos == len(self.stages) - 1)
        return F.cross_entropy(h.reshape(-1, L.VOCAB), y.reshape(-1)).item()

    # -- periodic checkpoint ----------------------------------------------------------
    def snapshot(self) -> dict:
        return copy.deepcopy({"it": self.it, "stages": [s.state_dict() for s in self.stages],
                              "opts": [o.state_dict() for o in self.opts],
                              "scheds": [s.state_dict() for s in self.scheds],
                              "norms": [n.state_dict() for n in self.norms]})

    def restore(self, snap: dict) -> None:
        snap = copy.deepcopy(snap)
        self.it = snap["it"]
        for s in range(len(self.stages)):
            self.stages[s].load_state_dict(snap["stages"][s])
            # New objects: a lost stage has none, and a rebuilt one has a boosted rule.
            self.opts[s] = self._make_opt(self.stages[s].parameters())
            self.scheds[s] = self._make_sched(self.opts[s])
            self.opts[s].load_state_dict(snap["opts"][s])
            self.scheds[s].load_state_dict(snap["scheds"][s])
            self.norms[s].load_state_dict(snap["norms"][s])

    # -- losing and rebuilding a stage ------------------------------------------------
    def lose(self, s: int, salt: int) -> None:
        """Every copy of stage s is gone: random weights, no optimizer state."""
        self.stages[s].init_weights(self.seed + 7919 * (salt + 1), s)
        self.opts[s] = None

    def rebuild(self, s: int, action: Action, sources: tuple[int, ...]) -> None:
        lost = self.stages[s].state_dict()
        skip = L.Stage.EDGE_PREFIXES
        if action is Action.CHECKFREE_MERGE:
            a, b = sources
            wa, wb = self.norms[a].norm(), self.norms[b].norm()
            if wa is None or wb is None:
                raise RecoveryError(f"no recorded gradient norm for stage {a} or {b}")
            body_names = [k for k in lost if not k.startswith(skip)]
            new = rebuild_stage(self.stages[a].state_dict(), self.stages[b].state_dict(), wa, wb,
                                skip=skip, names=body_names)
            for attr, holders in (("embed", self.edges.embedding_holders), ("head", self.edges.head_holders)):
                if s in holders:   # this stage's copy of an edge layer: from the other holder
                    other = next(h for h in holders if h != s)
                    new.update({k: v.clone() for k, v in self.stages[other].state_dict().items()
                                if k.startswith(attr + ".")})
        elif action is Action.CHECKFREE_PLUS_COPY:
            new = rebuild_edge_stage(self.stages[sources[0]].state_dict())
        else:
            raise ValueError(action)
        if set(new) != set(lost):
            raise RecoveryError(f"rebuilt stage {s} has keys {sorted(set(new) ^ set(lost))} wrong")
        self.stages[s].load_state_dict(new)
        self.opts[s], self.scheds[s] = restart_optimizer(
            self.stages[s].parameters(), self._make_opt, step=self.it,
            make_scheduler=self._make_sched, rule=LrRule(self.su.lr_factor))


def run(strategy: str, su: Setup, trace, seed: int, data, target: float | None = None) -> dict:
    """Train until ``su.iterations`` are done and, if ``target`` is given, it is reached
    (or the slot cap): a strategy that is slower than the no-failure run is still timed."""
    sim = Sim(su, plus=strategy in ("checkfree_plus", "no_failures_plus"), seed=seed, data=data)
    uses_ckpt = strategy in ("checkfree", "checkfree_plus", "rollback")
    ckpt = sim.snapshot() if uses_ckpt else None
    max_slots = int(su.iterations * su.max_slots_factor)
    wall, slot = 0.0, 0
    curve = {"slot": [0], "iteration": [0], "wall": [0.0], "eval_loss": [sim.eval_loss()]}
    actions: dict[str, int] = {}
    reached = target is None
    while (sim.it < su.iterations or not reached) and slot < max_slots:
        sim.step()
        wall += 1.0
        if uses_ckpt and sim.it % su.ckpt_every == 0:
            ckpt, wall = sim.snapshot(), wall + su.ckpt_cost
        failed = trace[slot] if not strategy.startswith("no_failures") else ()
        if failed:
            wall += su.restart_cost
            if strategy == "rollback":
                sim.restore(ckpt)
                actions["periodic"] = actions.get("periodic", 0) + 1
            else:
                statuses = [StageStatus(s, 1, 0 if s in failed else 1) for s in range(su.stages)]
                plan = plan_recovery(statuses, checkfree_plus=sim.plus, have_periodic=True)
                if any(a.action is Action.PERIODIC for a in plan):
                    sim.restore(ckpt)
                    actions["periodic"] = actions.get("periodic", 0) + 1
                else:
                    for s in failed:
                        sim.lose(s, slot)
                    for a in plan:
                        if a.action in (Action.CHECKFREE_MERGE, Action.CHECKFREE_PLUS_COPY):
                            sim.rebuild(a.stage, a.action, a.sources)
                            actions[a.action.value] = actions.get(a.action.value, 0) + 1
        slot += 1
        if slot % su.eval_every == 0 or sim.it >= su.iterations:
            curve["slot"].append(slot)
            curve["iteration"].append(sim.it)
            curve["wall"].append(wall)
            curve["eval_loss"].append(sim.eval_loss())
            reached = reached or curve["eval_loss"][-1] <= target
    return {"curve": curve, "actions": actions, "finished": sim.it >= su.iterations,
            "slots": slot, "wall": wall}


def as_redundant(base: dict, su: Setup) -> dict:
    """No state is ever lost: the no-failure trajectory, each iteration 1+overhead long."""
    c = base["curve"]
    k = 1.0 + su.redundant_overhead
    return {"curve": {**c, "wall": [w * k for w in c["wall"]]}, "actions": {},
            "finished": base["finished"], "slots": base["slots"], "wall": base["wall"] * k,
            "derived": f"no_failures trajectory, wall-clock x {k:.2f}"}


def to_target(res: dict, target: float) -> tuple[int | None, float | None]:
    c = res["curve"]
    for slot, wall, loss in zip(c["slot"], c["wall"], c["eval_loss"]):
        if loss <= target:
            return slot, wall
    return None, None


def target_of(base: dict, su: Setup) -> float:
    c = base["curve"]
    want = su.target_fraction * su.iterations
    i = min(range(len(c["iteration"])), key=lambda j: abs(c["iteration"][j] - want))
    return c["eval_loss"][i]


def table(results: dict, rates: list[float]) -> str:
    head = "| strategy | " + " | ".join(f"rate {r:g}: iters / wall to target" for r in rates) + " |"
    lines = [head, "|" + " --- |" * (len(rates) + 1)]
    for strat in STRATEGIES:
        cells = []
        for r in rates:
            rows = results[str(r)]["summary"][strat]
            it, wl = rows["iters_to_target_mean"], rows["wall_to_target_mean"]
            miss = rows["not_reached"]
            cell = "not reached" if it is None else f"{it:.0f} / {wl:.0f}"
            if miss and it is not None:
                cell += f" ({miss} seed(s) not reached)"
            cells.append(cell)
        lines.append(f"| {strat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, rates: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(rates), figsize=(5 * len(rates), 7), squeeze=False)
    for j, r in enumerate(rates):
        block = results[str(r)]
        seed0 = block["runs"][0]
        for strat in STRATEGIES:
            c = seed0[strat]["curve"]
            axes[0][j].plot(c["slot"], c["eval_loss"], label=strat)
            axes[1][j].plot(c["wall"], c["eval_loss"], label=strat)
        for i, xl in enumerate(("executed iterations", "modelled wall-clock (iterations)")):
            axes[i][j].axhline(block["target"][0], color="grey", ls=":", lw=1)
            axes[i][j].set_xlabel(xl)
            axes[i][j].set_ylabel("held-out loss")
            axes[i][j].set_title(f"stage-failure rate {r:g}/iteration (seed {block['seeds'][0]})")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run, under 5 minutes on 2 cores")
    p.add_argument("--rates", type=float, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--stages", type=int, default=None, help="default 4 with --quick, else 6")
    p.add_argument("--microbatch-size", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--ckpt-cost", type=float, default=2.0)
    p.add_argument("--restart-cost", type=float, default=5.0)
    p.add_argument("--redundant-overhead", type=float, default=0.18)
    p.add_argument("--lr-factor", type=float, default=1.1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "checkfree_convergence")
    args = p.parse_args(argv)
    require("matplotlib")
    torch.set_num_threads(1)
    rates = args.rates or ([0.005, 0.01] if args.quick else [0.0025, 0.005, 0.01, 0.02])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    iters = args.iterations or (200 if args.quick else 600)
    stages = args.stages or (4 if args.quick else 6)
    su = Setup(stages=stages, microbatch_size=args.microbatch_size, dim=args.dim, iterations=iters,
               ckpt_every=args.ckpt_every, ckpt_cost=args.ckpt_cost, restart_cost=args.restart_cost, redundant_overhead=args.redundant_overhead,
               lr_factor=args.lr_factor)
    data = L.corpus()
    t0 = time.monotonic()
    results: dict = {"setup": asdict(su), "rates": rates, "seeds": seeds}
    bases = {}
    for seed in seeds:
        bases[seed] = run("no_failures", su, [()] * (4 * iters), seed, data)
        print(f"[{time.monotonic() - t0:6.1f}s] seed {seed} no_failures done", file=sys.stderr)
    for r in rates:
        block = {"seeds": seeds, "runs": [], "target": [], "traces": []}
        for seed in seeds:
            trace = failure_trace.generate(su.stages, int(iters * su.max_slots_factor) + 1, r, seed)
            base = bases[seed]
            target = target_of(base, su)
            runs = {"no_failures": base, "redundant": as_redundant(base, su)}
            for strat in ("no_failures_plus", "checkfree", "checkfree_plus", "rollback"):
                if strat == "no_failures_plus" and r != rates[0]:   # trace-independent: reuse
                    runs[strat] = results[str(rates[0])]["runs"][seeds.index(seed)][strat]
                    continue
                runs[strat] = run(strat, su, trace, seed, data, target)
                print(f"[{time.monotonic() - t0:6.1f}s] rate {r} seed {seed} {strat} "
                      f"slots={runs[strat]['slots']} actions={runs[strat]['actions']}", file=sys.stderr)
            for res in runs.values():
                res["iters_to_target"], res["wall_to_target"] = to_target(res, target)
            block["runs"].append(runs)
            block["target"].append(target)
            block["traces"].append(failure_trace.summary(trace[:max(r_["slots"] for r_ in runs.values())]))
        block["summary"] = {}
        for strat in STRATEGIES:
            its = [run_[strat]["iters_to_target"] for run_ in block["runs"]]
            wls = [run_[strat]["wall_to_target"] for run_ in block["runs"]]
            ok = [i for i in range(len(its)) if its[i] is not None]
            block["summary"][strat] = {
                "iters_to_target_mean": statistics.fmean(its[i] for i in ok) if ok else None,
                "wall_to_target_mean": statistics.fmean(wls[i] for i in ok) if ok else None,
                "not_reached": len(its) - len(ok),
                "final_eval_loss_mean": statistics.fmean(run_[strat]["curve"]["eval_loss"][-1]
                                                         for run_ in block["runs"]),
            }
        results[str(r)] = block
    results["elapsed_s"] = time.monotonic() - t0
    results["table"] = table(results, rates)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, rates, args.out.with_suffix(".png"))
    print(results["table"])
    print(f"\n({len(seeds)} seed(s), {iters} iterations, {su.stages} stages, "
          f"{results['elapsed_s']:.0f} s; {args.out.with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
