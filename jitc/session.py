"""``jitc.protect()``: the few lines a training script adds.

The session registers the rank's training state with the shim (so the native agent can write
it without Python), marks step boundaries, phases and the optimizer window (invariant I1),
restores everything on restart, and fires injected faults. The user's loop is unchanged
beyond ``protect`` and ``steps``/``batches``.
"""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist

from . import carried, ddp_buckets, env, excepthook, private, rank_state, rng, sharding, warmset
from . import faults as faults_mod
from . import limits
from . import state as st
from ._shim import c_strings, check, ffi_lib
from .data import check_resumable, epoch_iterator
from .errors import CorruptSnapshotError, JitcError
from .resume import restore
from .snapshot import layout
from .snapshot import meta as meta_record

log = logging.getLogger("jitc")
PHASE = {"idle": 0, "forward": 1, "backward": 2, "optimizer": 3}
OPTIMIZER_WAIT_S = 600.0     # how long optimizer.step() waits for a running snapshot
PERIODIC_TIMEOUT_S = 300.0


def _rank_info() -> tuple[int, int, int]:
    rank, local_rank, world = env.rank_info()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, local_rank, world


def _attempt() -> int:
    # Under the supervisor JITC_ATTEMPT; under torchrun --max-restarts its restart count.
    return limits.attempt(default=env.get_int("TORCHELASTIC_RESTART_COUNT", 0))


class Session:
    """A protected training run on this rank. Create it with :func:`protect`."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                 scheduler=None, extra_state: Mapping[str, Any] | None = None,
                 seed: int | None = None, stage: int | None = None,
                 num_stages: int | None = None, periodic_every: int | None = None,
                 checkfree_plus: bool = False):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.extra_state = dict(extra_state or {})
        for name, obj in self.extra_state.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise JitcError(f"extra_state[{name!r}] needs state_dict() and load_state_dict()")
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self.rank, self.local_rank, self.world_size = _rank_info()
        self.stage = 0 if stage is None else int(stage)
        self.num_stages = 1 if num_stages is None else int(num_stages)
        if not 0 <= self.stage < self.num_stages:
            raise JitcError(f"stage {self.stage} is outside 0..{self.num_stages - 1}")
        self.pipeline = self.num_stages > 1
        # FSDP2/HSDP: the shards are what the supervisor recovers, each striped over its
        # copies; stage/num_stages carry them (the shim's HELLO shard/num_shards), but no
        # stage layout records are written: a lost shard is never rebuilt by CheckFree.
        self.sharding = sharding.detect(st.unwrap(model), self.rank, self.world_size)
        self._frozen: meta_record.Frozen | None = None   # the sharding record, encoded once
        if self.sharding is not None:
            if self.pipeline:
                raise JitcError("protect(stage=, num_stages=) with a sharded (fully_shard) "
                                "model: pipeline + FSDP is not supported yet")
            self.stage, self.num_stages = self.sharding.shard, self.sharding.num_shards
        self.checkfree_plus = bool(checkfree_plus)
        self._recorded: dict[str, Any] = {}
        self._carried: dict[str, carried.Getter] = {}   # see carry()
        self._kept: dict[str, Any] = {}                  # restored, not yet handed back
        self._rank_store: rank_state.RankStore | None = None
        self._captures = carried.Captures(meta_record.encode)
        self._replica_check = False
        self._keep_failed = False
        self.periodic_every = periodic_every
        ddp = ddp_buckets.find(model)
        self._buckets = ddp_buckets.BucketOrder(ddp) if ddp is not None else None
        # State the meta record cannot hold fails now, in one line naming it (MetaError),
        # not at recovery time; and before the shim starts anything.
        self._has_scalar_state = bool(st.optimizer_scalars(self.optimizer)["per_param"])
        self._meta(0)
        # Malformed JITC_* values: one line and exit 2, before anything starts (the shim
        # refuses the same values with the same words).
        self.limits = limits.check_rank_env()
        self.attempt = _attempt()
        self.step = -1
        if env.get(env.DIR) is not None:   # another user's JITC_DIR: one line, exit 2
            private.require_snapshot_root(env.get(env.DIR), env.DIR)
        self._ffi, self._lib = ffi_lib()
        check(self._lib.jitc_init(self.rank, self.local_rank, self.world_size,
                                  self.stage, self.num_stages), "jitc_init")
        self.supervised = bool(self._lib.jitc_supervised())
        self._registered: list[st.StateTensor] = []
        self._opt_state_size = -1
        self._periodic_thread: threading.Thread | None = None
        self._in_backward = False
        self._register()
        if self.pipeline:
            self._write_stage_layout()
        self._say_unreplicated()
        self.start_step, self.resumed_from = restore(self)
        if self.resumed_from is not None:
            self._register()
            self._lib.jitc_report_resumed(self.start_step, str(self.resumed_from).encode())
        if self._buckets is not None:
            self._buckets.start(self.start_step)   # before the first forward
        self._restore_carried()
        specs = faults_mod.parse_specs([env.get(env.INJECT, "")])
        self._injector = faults_mod.Injector(specs, self.rank, self.attempt, self._announce)
        self._install_hooks()
        excepthook.install(self._on_exception)

    # -- registration ------------------------------------------------------------------
    def state_tensors(self) -> list[st.StateTensor]:
        return st.model_tensors(self.model) + st.optimizer_tensors(self.optimizer)

    def _register(self) -> None:
        items = self.state_tensors()
        st.check_registrable(items)
        lib, ffi = self._lib, self._ffi
        check(lib.jitc_registry_begin(), "jitc_registry_begin")
        for item in items:
            t = item.local   # a DTensor's local shard: the storage its optimizer updates
            shape = ffi.new("int64_t[]", list(t.shape) or [0])
            device = t.device.index if t.device.type == "cuda" else -1
            check(lib.jitc_registry_add(item.name.encode(), ffi.cast("void *", t.data_ptr()),
                                        t.numel() * t.element_size(), st.DTYPES[t.dtype].encode(),
                                        shape, t.dim(), device), f"register {item.name}")
        check(lib.jitc_registry_commit(), "jitc_registry_commit")
        self._registered = items   # keeps every registered tensor alive
        if self.sharding is not None:
            self._frozen = meta_record.Frozen("sharding", sharding.record(self.sharding, items))
        self._opt_state_size = st.optimizer_state_size(self.optimizer)
        self._has_scalar_state = bool(st.optimizer_scalars(self.optimizer)["per_param"])

    def _write_stage_layout(self) -> None:
        # For CheckFree: the supervisor rebuilds a lost stage to this layout (checkfree/layout.py).
        root = env.get(env.DIR)
        if root is None:
            return
        from .checkfree.layout import StageLayout, write_layout
        tensors = tuple((i.name, st.DTYPES[i.tensor.dtype], tuple(i.tensor.shape))
                        for i in st.model_tensors(self.model))
        write_layout(root, StageLayout(self.stage, self.num_stages, self.checkfree_plus, tensors))

    def _say_unreplicated(self) -> None:
        layout_ = self.sharding
        if layout_ is None or layout_.replicas > 1 or self.local_rank != 0:
            return
        net = (f"the periodic snapshot every {self.periodic_every} steps" if self.periodic_every
               else "nothing (periodic_every is not set)")
        print(f"jitc: mesh {list(layout_.mesh_shape)} shards the model with no copies: a "
              f"failed rank takes its shard's only copy, so only {net} protects this run",
              file=sys.stderr, flush=True)

    @property
    def sharding_record(self) -> dict | None:
        """This rank's meta ``sharding`` record (FSDP), as every snapshot of it holds."""
        return self._frozen.value if self._frozen is not None else None

    def _meta(self, completed: int) -> bytes:
        optim = st.optimizer_scalars(self.optimizer) if self._has_scalar_state else {
            "param_groups": [{k: v for k, v in g.items() if k != "params"}
                             for g in self.optimizer.param_groups], "per_param": {}}
        meta = {
            "completed": completed, "seed": self.seed, "optim": optim,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "extra": {k: v.state_dict() for k, v in self.extra_state.items()},
        }
        if self.pipeline:
            meta["pipeline"] = {"stage": self.stage, "num_stages": self.num_stages,
                                "checkfree_plus": self.checkfree_plus}
        if self._buckets is not None and self._buckets.order is not None:
            meta[ddp_buckets.META_KEY] = self._buckets.order
        if self._recorded:
            # float() here, at the step boundary, not inside the step: a GPU norm is read
            # back once per step, after the optimizer step was queued.
            meta["record"] = {k: float(v) for k, v in self._recorded.items()}
        # Plain data only, never a pickle: a snapshot found on disk must not run code.
        # The sharding record does not change: encoded once (meta.Frozen), not per step.
        return meta_record.encode(meta, frozen=self._frozen)

    def record(self, **values: float | torch.Tensor) -> None:
        """Small per-step numbers (e.g. ``grad_norm=``) stored with this step's state.

        Values recorded during step i go into the meta handed to the shim when step i+1
        begins, so every snapshot carries the values of its last *completed* step (a step
        that fails half-way leaves the previous ones). They survive restarts. The
        supervisor reads ``grad_norm`` as the CheckFree weight of this stage: record it
        every step, before gradient clipping.
        """
        self._recorded.update(values)

    # -- state carried across steps, each rank its own (carried.py, rank_state.py) -------
    def carry(self, name: str, get: carried.Getter) -> Any:
        """Keep what ``get()`` returns, this rank's own, across a restart.

        For values your loop carries from one step to the next that are neither model nor
        optimizer state nor drawn inside the step: a batch prefetched for the next step, a
        running average kept outside the model, a rank-0-only ``best_val_loss``, a per-rank
        counter. ``get`` is called at every step boundary (and before each optimizer step);
        returns the value kept for the resume step when this run resumed, else ``get()``::

            X, Y = session.carry("batch", lambda: (X, Y))

        Tensors (CUDA too) are copied to the CPU at each capture and come back on their
        device. Other values: what the meta record holds (plain data), checked now.
        """
        if not isinstance(name, str) or not callable(get):
            raise JitcError("session.carry(name, get): name is a str, get a callable")
        value = get()
        try:
            meta_record.encode(carried.to_cpu(value, []))
        except meta_record.MetaError as e:               # named by the carried value's name
            where = str(e).removeprefix("meta")
            raise meta_record.MetaError(f"session.carry({name!r}){where}") from None
        self._carried[name] = get
        return self._kept.pop(name) if name in self._kept else value

    def _restore_carried(self) -> None:
        root = env.get(env.DIR)
        if self.resumed_from is None or root is None:
            return
        rec = rank_state.choose(rank_state.RankStore(root, self.rank).read(), self.start_step,
                                self.rank)
        if rec is not None:
            self._kept = carried.restore(rec.get("values") or {}, rec.get("devices") or {})
            if rec.get("extra"):
                rank_state.write_resumed(root, self.rank, self.attempt, rec)
                self._replica_check = self.local_rank == 0

    def _check_replicas(self) -> None:
        """Once every rank has resumed (see rank_state.replica_mismatch)."""
        self._replica_check = False
        found = rank_state.replica_mismatch(env.get(env.DIR), self.attempt, self.start_step,
                                            self.stage)
        for key, ranks in found.items():
            log.warning("jitc: extra_state[%r] differed between replicas %s at step %d: the "
                        "snapshot holds one replica's value; a value that differs between "
                        "ranks belongs in session.carry()", key, ranks, self.start_step)

    def _keep(self, completed: int, provisional: bool) -> None:
        if not self._carried and not (self.extra_state and self.world_size > self.num_stages):
            return
        root = env.get(env.DIR)
        if root is None:
            return
        if self._rank_store is None:
            self._rank_store = rank_state.RankStore(root, self.rank,
                                                    fresh=self.resumed_from is None)
        values, devices = self._captures.capture(self._carried)
        extra = {} if provisional else {
            k: rank_state.digest(meta_record.encode(v.state_dict()))
            for k, v in self.extra_state.items()}
        try:
            self._rank_store.write(completed, rank_state.record(
                self.rank, self.stage, completed, provisional, values, devices, extra))
        except OSError as e:          # a full disk: training goes on, the values may not
            if not self._keep_failed:
                self._keep_failed = True
                log.warning("jitc: rank %d: cannot keep carried values in %s: %s; if this "
                            "rank restarts, session.carry() will not give them back",
                            self.rank, self._rank_store.dir, e)

    # -- hooks -------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        self.model.register_forward_pre_hook(lambda *_: self._lib.jitc_mark())
        self.model.register_forward_hook(self._after_forward)
        params = [p for p in st.unwrap(self.model).parameters() if p.requires_grad]
        if params:
            # The first parameter's gradient is normally the last one computed: once it is
            # accumulated, backward's own work is done and only the all-reduce may remain.
            params[0].register_post_accumulate_grad_hook(lambda _p: self._lib.jitc_mark())
        if self.sharding is not None:
            # FSDP2 assigns a sharded parameter's .grad after its reduce-scatter, never
            # accumulates it: the hook above does not fire. Mark instead when backward
            # reaches each sharded block, before FSDP's all-gather for it (prepended, our
            # tensor hook runs before FSDP's): a rank blocked in that collective has moved
            # further than the one that hangs before it, which the supervisor blames as
            # the least advanced (supervisor/classify.py).
            for block in sharding.blocks(st.unwrap(self.model)):
                block.register_forward_hook(self._mark_in_backward, prepend=True)
        self.optimizer.register_step_pre_hook(self._before_optimizer)
        self.optimizer.register_step_post_hook(self._after_optimizer)

    def _after_forward(self, _module, _inputs, output) -> None:
        tensor = _first_grad_tensor(output)
        if tensor is not None and self.step >= 0:
            tensor.register_hook(self._on_backward_start)

    def _mark_in_backward(self, _module, _inputs, output) -> None:
        tensor = _first_grad_tensor(output)
        if tensor is not None and self.step >= 0:
            tensor.register_hook(self._backward_mark)

    def _backward_mark(self, grad):
        self._lib.jitc_mark()
        return grad

    def _on_backward_start(self, grad):
        if not self._in_backward:
            self._in_backward = True
            self._lib.jitc_set_phase(PHASE["backward"])
            self._lib.jitc_mark()
            self._fire("backward")
        return grad

    def _before_optimizer(self, *_args) -> None:
        self._lib.jitc_set_phase(PHASE["optimizer"])
        if self.step >= 0 and self._carried:
            self._keep(self.step + 1, provisional=True)
        self._fire("optimizer")
        status = self._lib.jitc_optimizer_begin(OPTIMIZER_WAIT_S)
        check(status, "optimizer window (a snapshot is being written)")

    def _after_optimizer(self, *_args) -> None:
        self._lib.jitc_optimizer_end()
        if st.optimizer_state_size(self.optimizer) != self._opt_state_size:
            self._register()   # the optimizer created its state (first step) or changed it

    # -- the loop ----------------------------------------------------------------------
    def steps(self, total: int) -> Iterator[int]:
        """Yield the step indices still to run, from the resume step up to ``total``."""
        for step in range(self.start_step, total):
            self._begin(step)
            yield step
        self._finish(total)

    def batches(self, loader, total: int) -> Iterator[tuple[int, Any]]:
        """Like :meth:`steps`, also yielding the loader's batch for each step, one batch a
        step, epochs following each other; a resumed run starts at the right batch."""
        check_resumable(loader)
        per_epoch = len(loader)
        if per_epoch == 0:
            raise JitcError("session.batches(): the loader has no batches")
        iterator = None
        for step in range(self.start_step, total):
            epoch, index = divmod(step, per_epoch)
            if iterator is None or index == 0:
                iterator = epoch_iterator(loader, epoch, index, self.seed, self.rank)
            batch = next(iterator)
            self._begin(step)
            yield step, batch
        self._finish(total)

    def _begin(self, step: int) -> None:
        # Order matters (I1): the meta for `step` is handed over while the window of the
        # previous optimizer step is still open, then step_begin closes it.
        if self._buckets is not None and step > self.start_step:
            self._buckets.settle()   # the first backward's order, in this step's meta
        check(self._set_meta(step), "jitc_set_meta")
        self._keep(step, provisional=False)
        check(self._lib.jitc_step_begin(step), "jitc_step_begin")
        if self._replica_check and step > self.start_step:
            self._check_replicas()
        self.step = step
        self._in_backward = False
        rng.reseed(self.seed, self.rank, step)
        if step == self.start_step + 1:
            warmset.record(self.local_rank)   # after one whole step: its lazy imports done
        if self.periodic_every and step > self.start_step and step % self.periodic_every == 0:
            self._start_periodic(step)
        self._fire("forward")

    def _set_meta(self, step: int) -> int:
        blob = self._meta(step)
        return self._lib.jitc_set_meta(blob, len(blob))

    def _finish(self, total: int) -> None:
        if self._replica_check:
            self._check_replicas()
        if self._periodic_thread is not None:
            self._periodic_thread.join()
        self._set_meta(total)
        check(self._lib.jitc_steps_finished(total), "jitc_steps_finished")
        self._lib.jitc_shutdown(1)

    # -- faults and failures -----------------------------------------------------------
    def _fire(self, phase: str) -> None:
        if self._injector:
            self._injector.maybe_fire(self.step, phase, arm=self._arm)

    def _arm(self, kind: str) -> None:
        check(self._lib.jitc_fault_arm(kind.encode()), f"arm {kind}")

    def _announce(self, spec) -> None:
        self._lib.jitc_report_fault_injected(spec.kind.encode(), spec.step, PHASE[spec.phase])

    def _on_exception(self, kind: str, exc: BaseException) -> None:
        # Supervised: the supervisor has our native agent write its stripe of the snapshot,
        # then releases us. Shim-only: the shim writes this rank's own complete snapshot into
        # JITC_DIR and exits 75 inside this call (csrc/api.cpp), never returning.
        self._lib.jitc_report_failure(kind.encode(), excepthook.describe(exc).encode())
        if self.supervised:
            self._lib.jitc_wait_command(excepthook.LINGER_S)

    # -- snapshots written by this rank itself -------------------------------------------
    def _write(self, directory: Path, nstripes: int, stripe: int) -> int:
        from .snapshot import publish
        stripes = self._ffi.new("int[]", [stripe])
        stems, _keep = c_strings([layout.stripe_stem(stripe, nstripes)])
        step_out = self._ffi.new("int64_t *")
        check(self._lib.jitc_snapshot_write(str(directory).encode(), nstripes, stripes, stems,
                                            1, PERIODIC_TIMEOUT_S, step_out), "snapshot")
        try:
            publish(directory)   # whichever replica writes the last stripe publishes
        except CorruptSnapshotError:
            pass                 # other replicas' stripes still missing: not complete yet
        return int(step_out[0])

    def _start_periodic(self, step: int) -> None:
        """Background periodic snapshot, striped over this shard's replicas."""
        root = env.get(env.DIR)
        if root is None or (self._periodic_thread and self._periodic_thread.is_alive()):
            return
        replicas = max(1, self.world_size // self.num_stages)
        replica = self.rank // self.num_stages
        directory = layout.periodic_dir(root, self.attempt, step, self.stage)
        self._periodic_thread = threading.Thread(
            target=self._write, args=(directory, replicas, replica), name="jitc-periodic",
            daemon=True)
        self._periodic_thread.start()


def _first_grad_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.requires_grad else None
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = _first_grad_tensor(item)
            if found is not None:
                return found
    return None


def protect(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, scheduler=None,
            extra_state: Mapping[str, Any] | None = None, seed: int | None = None,
            stage: int | None = None, num_stages: int | None = None,
            periodic_every: int | None = None, checkfree_plus: bool = False) -> Session:
    """Protect a training run: register its state, restore it on restart.

    Call after the model, optimizer and scheduler are built (and after
    ``init_process_group``), then loop ``for step in session.steps(total)``.
    ``extra_state``: objects with ``state_dict``/``load_state_dict`` (replicated on every
    data-parallel replica, like the scheduler; a resume warns naming a key whose value
    differed between replicas: per-rank values go to :meth:`Session.carry`). ``seed``: base
    of the per-step RNG streams (default: ``torch.initial_seed()``). ``stage``/``num_stages``: pipeline layout.
    ``periodic_every``: also write a background snapshot every N steps (the safety net
    for failures that take out every replica). ``checkfree_plus``: the pipeline trains
    with the CheckFree+ swap schedule, so a lost edge stage may be restored by copying
    its neighbour. Record per-step values (the CheckFree grad norm) with
    :meth:`Session.record`.
    """
    return Session(model, optimizer, scheduler=scheduler, extra_state=extra_state, seed=seed,
                   stage=stage, num_stages=num_stages, periodic_every=periodic_every,
                   checkfree_plus=checkfree_plus)
