"""A resumed DDP run reduces its gradients in the bucket layout the run that never failed used.

DDP builds its gradient buckets twice: at construction, in parameter order (torch 2.13
puts every parameter in one bucket), and again after the process's first backward (with
``static_graph``, its second), in the order the gradients became ready (``Reducer::rebuild_buckets``; rank 0's order, broadcast).
A run that never failed therefore reduces step 0 in the initial layout and every later step
in the rebuilt one, while a process resumed at step K would reduce step K in the initial
layout. The all-reduce sums each element in an order set by its position in the bucket
(gloo's and NCCL's rings cut the bucket into per-rank chunks): with 3 or more ranks the
resumed step then differs in the last bits, and the run never becomes bitwise equal again.
With 2 ranks ``a + b == b + a`` hides it.

So the first backward's ready order (indices into the Reducer's parameter list) goes into
the meta record, and a process resumed after DDP's rebuild step gives its DDP a new Reducer, built by
DDP's own ``_ddp_init_helper`` over the parameters in that order and rebuilt at once
(``_push_all_rebuilt_params`` + ``_rebuild_buckets``): the same bucket computation over the
same tensors in the same order, so the same buckets, and the Reducer never rebuilds again.
Nothing runs per step: the order is recorded once, the Reducer replaced once per resume.

Every rank of the DDP group resumes from the same snapshot, hence the same order; the
rebuild broadcasts rank 0's buckets like DDP's own rebuild does. A DDP that never rebuilds
(``find_unused_parameters`` without ``static_graph``), or whose buckets the script already
rebuilt before ``protect()`` (its layout is then the same in every attempt), needs nothing. One whose Reducer
cannot be rebuilt this way (the Python reducer, mixed precision, a built-in comm hook, no
Reducer at all) resumes with DDP's initial layout, with a warning.
"""
from __future__ import annotations

import logging

import torch

from .errors import JitcError

log = logging.getLogger("jitc")
META_KEY = "ddp_bucket_order"


def find(model: torch.nn.Module):
    """The DistributedDataParallel in ``model``'s ``.module`` chain whose Reducer rebuilds
    its buckets, or None."""
    from torch.nn.parallel import DistributedDataParallel
    while not isinstance(model, DistributedDataParallel):
        model = getattr(model, "module", None)
        if not isinstance(model, torch.nn.Module):
            return None
    if getattr(model, "reducer", None) is None:     # every parameter's all-reduce is delayed
        return None
    if getattr(model, "_has_rebuilt_buckets", False):
        # Its layout is fixed already (the script rebuilt it before protect(), as
        # examples/ddp_train.py does): every attempt reduces in it; nothing to impose.
        return None
    return model if model.static_graph or not model.find_unused_parameters else None


class BucketOrder:
    """One DDP's ready order: recorded in the first backward, or restored and imposed."""

    def __init__(self, ddp):
        self.ddp = ddp
        self.count = len(ddp._build_params_for_reducer()[0])
        self.order: list[int] | None = None      # what the meta record carries
        self.saved = None                         # the resumed snapshot's (resume.restore)
        self._seen: list[int] = []
        self._hooks: list = []

    def start(self, start_step: int) -> None:
        """After the snapshot (if any) was restored: impose its order when resuming at a
        step > 0, else record this process's first backward."""
        saved = self.saved
        # DDP rebuilds after the first backward; with static_graph after the second (the
        # first all-reduces everything at its end and detects unused parameters).
        rebuilt_at = 2 if self.ddp.static_graph else 1
        if start_step >= rebuilt_at and saved is not None and self._valid(saved):
            why = self._cannot_rebuild()
            if why is None:
                self._impose(list(saved))
                self.order = list(saved)
                return
            log.warning("jitc: cannot give the resumed DDP the bucket layout of the run that "
                        "never failed (%s): step %d may differ from it in the last bits",
                        why, start_step)
        elif start_step >= rebuilt_at:
            log.warning("jitc: the snapshot holds no DDP bucket order: step %d is reduced in "
                        "DDP's initial bucket layout and may differ in the last bits from "
                        "the run that never failed", start_step)
        elif start_step > 0:      # static_graph resumed at step 1: DDP rebuilds a step late
            log.warning("jitc: a static_graph DDP resumed at step 1 rebuilds its buckets "
                        "after step 2, the run that never failed after step 1: step 2 may "
                        "differ from it in the last bits")
        params, _ = self.ddp._build_params_for_reducer()
        self._hooks = [p.register_post_accumulate_grad_hook(lambda _p, i=i: self._seen.append(i))
                       for i, p in enumerate(params)]

    def settle(self) -> None:
        """At a step boundary after the first backward: keep the order seen, drop the hooks."""
        if not self._hooks:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        first = self._seen[:self.count]          # several backward calls: the first one's
        if self._valid(first):
            self.order = first
        else:
            log.warning("jitc: the first backward did not give every DDP parameter a "
                        "gradient once: a resumed run reduces its first step in DDP's "
                        "initial bucket layout")

    def _valid(self, order) -> bool:
        return (isinstance(order, list) and all(type(i) is int for i in order)
                and sorted(order) == list(range(self.count)))

    def _cannot_rebuild(self) -> str | None:
        ddp = self.ddp
        if getattr(ddp, "_use_python_reducer", False):
            return "DDP runs its Python reducer"
        if getattr(ddp, "mixed_precision", None) is not None:
            return "DDP mixed precision"
        if ddp._get_ddp_logging_data().get("comm_hook") and not ddp._comm_hooks:
            return "a built-in comm hook"
        return None

    def _impose(self, order: list[int]) -> None:
        import torch.distributed as dist
        ddp = self.ddp
        params, sparse = ddp._build_params_for_reducer()
        params, sparse = [params[i] for i in order], [sparse[i] for i in order]
        # The old Reducer's hooks sit on the same gradient accumulators: off before the new.
        ddp.reducer._remove_autograd_hooks()
        ddp._ddp_init_helper(params, sparse, ddp._build_debug_param_to_name_mapping(params),
                             ddp.static_graph)
        if ddp.static_graph:                       # as DDP.__setstate__ does
            ddp.reducer._set_static_graph()
            ddp.logger._set_static_graph()
        for hook, state in ddp._comm_hooks:
            ddp.logger._set_comm_hook_name(hook.__qualname__)
            dist._register_comm_hook(ddp.reducer, state, hook)
        ddp.reducer._push_all_rebuilt_params()     # in parameter order: here, the ready order
        if not ddp.reducer._rebuild_buckets():
            raise JitcError("DDP's new Reducer did not rebuild its buckets")
        ddp._has_rebuilt_buckets = True
