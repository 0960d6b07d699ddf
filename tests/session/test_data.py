"""A resumed loader continues at the right batch, without touching the batches before it."""
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from jitc.data import epoch_iterator


class Numbers(Dataset):
    def __init__(self, n):
        self.n, self.touched = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.touched.append(i)
        return torch.tensor(i)


def _sequence(loader, seed, start, total, rank=0):
    out, per_epoch, it = [], len(loader), None
    for step in range(start, total):
        epoch, index = divmod(step, per_epoch)
        if it is None or index == 0:
            it = epoch_iterator(loader, epoch, index, seed, rank)
        out.append(next(it).tolist())
    return out


def _loader(data, rank=1):
    sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7, drop_last=True)
    return DataLoader(data, batch_size=3, sampler=sampler, drop_last=True)


def test_resume_mid_epoch_matches_uninterrupted_run():
    full = _sequence(_loader(Numbers(40)), seed=1, start=0, total=14)   # 6 batches/epoch
    for start in (1, 5, 6, 7, 13):
        assert _sequence(_loader(Numbers(40)), 1, start, 14) == full[start:], start


def test_skipped_batches_are_not_loaded():
    data = Numbers(40)
    _sequence(_loader(data), seed=1, start=4, total=6)
    full = _sequence(_loader(Numbers(40)), seed=1, start=0, total=6)
    assert sorted(data.touched) == sorted(i for batch in full[4:6] for i in batch)


def test_iterator_creation_does_not_disturb_the_step_stream():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    epoch_iterator(_loader(Numbers(40)), 0, 2, seed=1, rank=0)
    assert torch.equal(torch.rand(3), expected)
