"""The warmup + decay lr schedule against its formula at known steps, and through LambdaLR."""
from __future__ import annotations

import math

import pytest
import torch

from bertperf.optim.schedules import WarmupDecaySchedule
from bertperf.utils.errors import BertperfError


def reference(step: int, total: int, warmup: int, decay: str, power: float) -> float:
    """The formula of the module docstring, written out independently."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    if total == warmup:
        return 0.0  # no decay span: the warmup ends at the last step
    remaining = max(0.0, 1.0 - (step - warmup) / (total - warmup))
    return remaining if decay == "linear" else remaining ** power


@pytest.mark.parametrize("total,warmup", [(100, 10), (7, 0), (5, 5), (1, 1), (1000, 284)])
@pytest.mark.parametrize("decay,power", [("linear", 0.5), ("poly", 0.5), ("poly", 2.0), ("constant", 0.5)])
def test_factor_matches_formula(total, warmup, decay, power):
    sched = WarmupDecaySchedule(total_steps=total, warmup_steps=warmup, decay=decay, power=power)
    for step in range(total + 3):
        assert sched.factor(step) == pytest.approx(reference(step, total, warmup, decay, power), rel=1e-12, abs=0)


def test_known_values():
    s = WarmupDecaySchedule(total_steps=110, warmup_steps=10, decay="linear")
    assert s.factor(0) == 0.1  # first step: 1/W of the lr, never 0
    assert s.factor(9) == 1.0  # the W-th step reaches the full lr
    assert s.factor(10) == 1.0  # decay starts where warmup ended
    assert s.factor(60) == 0.5  # half-way through the decay
    assert s.factor(110) == 0.0 and s.factor(500) == 0.0
    p = WarmupDecaySchedule(total_steps=110, warmup_steps=10, decay="poly", power=0.5)
    assert p.factor(85) == pytest.approx(math.sqrt(0.25))


def test_lambda_lr_applies_factor_per_optimizer_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2)
    sched = WarmupDecaySchedule(total_steps=20, warmup_steps=4, decay="poly", power=0.5)
    lr_sched = sched.lr_scheduler(opt)
    seen = []
    for _ in range(22):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lr_sched.step()
    assert seen == pytest.approx([0.2 * reference(s, 20, 4, "poly", 0.5) for s in range(22)], rel=1e-12)
    # the state holds the position only: a fresh scheduler resumes at the same lr
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    lr2 = sched.lr_scheduler(opt2)
    lr2.load_state_dict(lr_sched.state_dict())
    # LambdaLR recomputes the lr on its next step; compare at the same position
    opt2.step()
    lr2.step()
    opt.step()
    lr_sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_warmup_longer_than_the_run_is_shortened():
    s = WarmupDecaySchedule.from_section({"type": "WarmupPolyDecay", "params": {"warmup_num_steps": 50}}, 10)
    assert (s.total_steps, s.warmup_steps) == (10, 10)


def test_from_section():
    s = WarmupDecaySchedule.from_section({"type": "WarmupPolyDecay", "params": {"warmup_proportion": 0.2843}},
                                         default_total_steps=7038)
    assert (s.total_steps, s.warmup_steps, s.decay, s.power) == (7038, round(0.2843 * 7038), "poly", 0.5)
    s = WarmupDecaySchedule.from_section({"type": "WarmupLinearDecay",
                                          "params": {"warmup_num_steps": 3, "total_num_steps": 9}}, 100)
    assert (s.total_steps, s.warmup_steps, s.decay) == (9, 3, "linear")


@pytest.mark.parametrize("section,needle", [
    ({"type": "Cosine"}, "scheduler.type"),
    ({"type": "WarmupPolyDecay", "params": {"warmup_ratio": 0.1}}, "warmup_ratio"),
    ({"type": "WarmupPolyDecay", "params": {"warmup_num_steps": -1}}, "warmup_steps"),
    ({"type": "WarmupPolyDecay", "params": {"warmup_proportion": 1.5}}, "warmup_proportion"),
])
def test_bad_sections_name_the_file(section, needle):
    with pytest.raises(BertperfError, match=needle) as e:
        WarmupDecaySchedule.from_section(section, 100, where="cfg.json")
    assert str(e.value).startswith("cfg.json")
