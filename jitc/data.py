"""Resuming a DataLoader mid-epoch without loading the batches it already consumed.

Step s of a run that draws one batch per step is batch ``s % len(loader)`` of epoch
``s // len(loader)``. On resume the epoch's batch sampler is replayed as *indices only*
(no dataset access) up to that batch, so data loading starts exactly where the lost run was.
"""
from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from .errors import JitcError
from .rng import derive


class _SkipBatches(Sampler):
    def __init__(self, batch_sampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self):
        return max(0, len(self.batch_sampler) - self.skip)


def _loader_from(loader: DataLoader, batch_sampler) -> DataLoader:
    workers = loader.num_workers
    return DataLoader(
        loader.dataset, batch_sampler=batch_sampler, num_workers=workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        generator=loader.generator, prefetch_factor=loader.prefetch_factor if workers else None,
        pin_memory_device=loader.pin_memory_device)


def check_resumable(loader: DataLoader) -> None:
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        raise JitcError("session.batches() needs a map-style dataset with batches drawn by a "
                        "sampler (an IterableDataset cannot be positioned mid-epoch)")


def epoch_iterator(loader: DataLoader, epoch: int, skip: int, seed: int, rank: int):
    """An iterator over epoch ``epoch`` of ``loader``, starting at batch ``skip``.

    The iterator is created under a forked RNG seeded from (seed, rank, epoch): creating it
    draws the workers' base seed from torch's RNG, and that draw must neither depend on when
    the iterator is made (start of epoch vs. mid-epoch resume) nor disturb the step's stream.
    """
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and hasattr(batch_sampler, "set_epoch") and batch_sampler is not sampler:
        batch_sampler.set_epoch(epoch)
    source = loader if skip == 0 else _loader_from(loader, _SkipBatches(batch_sampler, skip))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(seed, rank, -1 - epoch))
        return iter(source)
