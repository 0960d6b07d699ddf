import pytest
import torch

from jitc.checkfree import GradNormRecorder, rebuild_stage


def stage_with_grad(scale: float) -> torch.nn.Linear:
    m = torch.nn.Linear(4, 4)
    torch.manual_seed(0)
    for p in m.parameters():
        p.grad = torch.randn_like(p) * scale
    return m


def manual_norm(m):
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in m.parameters())).item()


def test_records_pre_clip_norm_of_last_completed_step():
    m = stage_with_grad(10.0)
    rec = GradNormRecorder(m)
    assert rec.norm() is None
    rec.record()
    assert rec.norm() is None                        # not committed: step not complete
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    rec.commit(7)
    want = manual_norm(stage_with_grad(10.0))
    assert rec.norm() == pytest.approx(want, rel=1e-5) and want > 5
    assert rec.step == 7
    # A later step that fails half-way (recorded, never committed) leaves it unchanged.
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    rec.record()
    assert rec.norm() == pytest.approx(want, rel=1e-5)


def test_accepts_norm_returned_by_clip():
    m = stage_with_grad(3.0)
    rec = GradNormRecorder(m.parameters())
    rec.record(torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0))
    rec.commit(0)
    assert rec.norm() == pytest.approx(manual_norm(stage_with_grad(3.0)), rel=1e-5)


def test_merge_uses_pre_clip_norms_not_a_plain_average():
    a, b = stage_with_grad(1.0), stage_with_grad(3.0)     # b's gradient is 3x a's
    with torch.no_grad():
        a.weight.fill_(0.0)
        b.weight.fill_(1.0)
    ra, rb = GradNormRecorder(a), GradNormRecorder(b)
    for m, r in ((a, ra), (b, rb)):
        r.record()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)   # both clip to norm 1
        r.commit(0)
    out = rebuild_stage(a.state_dict(), b.state_dict(), ra.norm(), rb.norm())
    assert out["weight"].mean().item() == pytest.approx(0.75, rel=1e-5)


def test_no_grads_and_state_round_trip():
    m = torch.nn.Linear(2, 2)
    rec = GradNormRecorder(m)
    rec.record()
    rec.commit(0)
    assert rec.norm() == 0.0
    other = GradNormRecorder(m)
    other.load_state_dict(rec.state_dict())
    assert other.norm() == 0.0 and other.step == 0
