import pytest
import torch

from jitc.checkfree import LrRule, restart_optimizer
from jitc.errors import RecoveryError

WARMUP = 10
BASE = 0.01


def make_opt(params):
    return torch.optim.AdamW(params, lr=BASE)


def make_warmup(opt):
    # The warm-up that, rebuilt from scratch, gives lr 0 at its first step.
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: i / WARMUP if i < WARMUP else 1.0)


def neighbour_lr(step):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = make_opt([p])
    sched = make_warmup(opt)
    for _ in range(step):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


@pytest.mark.parametrize("step", [1, 5, 30])
def test_first_update_after_recovery_has_boosted_nonzero_lr(step):
    p = torch.nn.Parameter(torch.ones(4))
    opt, sched = restart_optimizer([p], make_opt, step=step, make_scheduler=make_warmup)
    lr = opt.param_groups[0]["lr"]
    assert lr > 0
    assert lr == pytest.approx(1.1 * neighbour_lr(step))
    assert opt.state == {} or all(not s for s in opt.state.values())   # fresh state
    p.grad = torch.ones(4)
    before = p.detach().clone()
    opt.step()
    assert not torch.equal(p.detach(), before)   # the first update moves the weights
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.1 * neighbour_lr(step + 1))


def test_factor_is_configurable_and_kept_by_multiplicative_schedulers():
    p = torch.nn.Parameter(torch.ones(1))
    opt, sched = restart_optimizer(
        [p], make_opt, step=3, rule=LrRule(2.0),
        make_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5))
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * BASE * 0.5)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * BASE * 0.25)


def test_without_scheduler_lr_is_scaled():
    p = torch.nn.Parameter(torch.ones(1))
    opt, sched = restart_optimizer([p], make_opt, step=0)
    assert sched is None and opt.param_groups[0]["lr"] == pytest.approx(1.1 * BASE)


def test_bad_arguments():
    with pytest.raises(RecoveryError):
        LrRule(0.0)
    with pytest.raises(RecoveryError):
        restart_optimizer([torch.nn.Parameter(torch.ones(1))], make_opt, step=-1)
