"""The recovery paths of the convergence simulation, for stage counts other than 4."""
import pytest
import torch

import checkfree_convergence as C
import failure_trace
import llama_tiny as L
from jitc.checkfree import Action, StageStatus, plan_recovery


def sim(S, plus):
    su = C.Setup(stages=S, iterations=4, dim=16, microbatch_size=2, warmup=2)
    s = C.Sim(su, plus=plus, seed=0, data=L.corpus()[:20000])
    s.step()
    s.step()
    return s


@pytest.mark.parametrize("S", [5, 7])
def test_every_stage_rebuilt_as_the_method_says(S):
    s = sim(S, plus=True)
    lr_job = s.opts[0].param_groups[0]["lr"]     # what every stage uses at this step
    for lost in range(S):
        before = [st.state_dict() for st in s.stages]
        before = [{k: v.clone() for k, v in d.items()} for d in before]
        norms = [r.norm() for r in s.norms]
        plan = plan_recovery([StageStatus(i, 1, 0 if i == lost else 1) for i in range(S)], True, False)
        act = plan[lost]
        s.lose(lost, 0)
        s.rebuild(lost, act.action, act.sources)
        got = s.stages[lost].state_dict()
        key = "layers.0.mlp.w1.weight"
        if lost in (0, S - 1):
            assert act.action is Action.CHECKFREE_PLUS_COPY
            src = 1 if lost == 0 else S - 2
            assert all(torch.equal(got[k], before[src][k]) for k in got)
        else:
            assert act.action is Action.CHECKFREE_MERGE
            a, b = lost - 1, lost + 1
            want = (norms[a] * before[a][key].double() + norms[b] * before[b][key].double()) / (norms[a] + norms[b])
            assert torch.allclose(got[key].double(), want, atol=1e-6)
        lr_rebuilt = s.opts[lost].param_groups[0]["lr"]
        assert lr_rebuilt == pytest.approx(1.1 * lr_job) and lr_rebuilt > 0
        for st, d in zip(s.stages, before):   # restore for the next case
            st.load_state_dict(d)
    s.step()   # and training goes on


def test_rollback_restores_exactly():
    s = sim(4, plus=False)
    snap = s.snapshot()
    w = s.stages[2].state_dict()["layers.0.attn.wq.weight"].clone()
    s.step()
    s.lose(2, 1)
    s.restore(snap)
    assert s.it == 2 and torch.equal(s.stages[2].state_dict()["layers.0.attn.wq.weight"], w)


def test_failure_trace_is_deterministic_and_has_the_rate():
    a = failure_trace.generate(4, 20000, 0.01, seed=3)
    assert a == failure_trace.generate(4, 20000, 0.01, seed=3)
    assert a[:100] == failure_trace.generate(4, 100, 0.01, seed=3)
    n = sum(len(x) for x in a)
    assert 0.009 < n / (4 * 20000) < 0.011
    assert a != failure_trace.generate(4, 20000, 0.01, seed=4)
