"""LARS (checked by hand), parameter groups, and the lr / EMA schedules."""

import math

import pytest
import torch
from torch import nn

from detcon.optim import LARS, ema_schedule, lr_schedule, param_groups


def _step(opt, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()


def test_lars_two_steps_by_hand():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))  # |w| = 5
    opt = LARS([w], lr=2.0, momentum=0.5, weight_decay=0.1, eta=0.03)
    # Step 1: u = g + 0.1 w = (0.9, 1.2), |u| = 1.5, trust = 0.03 * 5 / 1.5 = 0.1
    # -> u = (0.09, 0.12) = mu; w = w - 2 mu = (2.82, 3.76).
    _step(opt, [w], [[0.6, 0.8]])
    assert w.tolist() == pytest.approx([2.82, 3.76], abs=1e-12)
    # Step 2: g = (1, 0); u = (1 + 0.282, 0.376); |w| = 4.7; trust = 0.03 * 4.7 / |u|.
    u = [1.282, 0.376]
    trust = 0.03 * 4.7 / math.hypot(*u)
    mu = [0.5 * 0.09 + trust * u[0], 0.5 * 0.12 + trust * u[1]]
    _step(opt, [w], [[1.0, 0.0]])
    assert w.tolist() == pytest.approx([2.82 - 2 * mu[0], 3.76 - 2 * mu[1]], abs=1e-12)


def test_lars_zero_norms_keep_trust_ratio_one():
    z = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = LARS([z], lr=0.5, momentum=0.9, weight_decay=0.1, eta=1e-3)
    # |p| = 0: u = g unchanged (no eta scaling) -> z = -0.5 g.
    _step(opt, [z], [[1.0, 2.0]])
    assert z.tolist() == pytest.approx([-0.5, -1.0], abs=1e-12)
    # |u| = 0 (g = -wd * p): u = 0, momentum only: z = z - 0.5 * 0.9 * (1, 2).
    _step(opt, [z], [[0.05, 0.1]])
    assert z.tolist() == pytest.approx([-0.5 - 0.45, -1.0 - 0.9], abs=1e-12)


def test_lars_excluded_group_momentum_only():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = LARS(
        [{"params": [w]}, {"params": [b], "lars_exclude": True, "weight_decay": 0.0}],
        lr=1.0,
        momentum=0.5,
        weight_decay=0.1,
        eta=0.03,
    )
    _step(opt, [w, b], [[0.6, 0.8], [0.5, 0.5]])
    assert b.tolist() == pytest.approx([0.5, -1.5], abs=1e-12)  # u = g, no trust ratio
    assert w.tolist() == pytest.approx([2.91, 3.88], abs=1e-12)  # as by hand above, lr 1
    _step(opt, [w, b], [[0.0, 0.0], [1.0, 0.0]])
    assert b.tolist() == pytest.approx([0.5 - 1.25, -1.5 - 0.25], abs=1e-12)  # mu = .5 mu + g


def test_lars_excluded_group_ignores_weight_decay_value():
    b = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = LARS([{"params": [b], "lars_exclude": True}], lr=1.0, momentum=0.0, weight_decay=0.5)
    _step(opt, [b], [[0.25]])
    assert b.item() == pytest.approx(1.75)


def test_lars_matches_per_parameter_formula_and_lr_changes():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in [(3, 4), (5,), (2, 2, 3)]]
    copies = [p.detach().clone() for p in params]
    opt = LARS(params, lr=0.7, momentum=0.9, weight_decay=0.01, eta=0.02)
    mus = [torch.zeros_like(c) for c in copies]
    for lr in (0.7, 0.3, 0.1):
        for group in opt.param_groups:
            group["lr"] = lr
        grads = [torch.randn_like(c) for c in copies]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for i, (c, g) in enumerate(zip(copies, grads, strict=True)):
            u = g + 0.01 * c
            u = u * (0.02 * c.norm() / u.norm())
            mus[i] = 0.9 * mus[i] + u
            copies[i] = c - lr * mus[i]
    for p, c in zip(params, copies, strict=True):
        torch.testing.assert_close(p.detach(), c)


def test_lars_skips_params_without_grad_and_validates():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = LARS([a, b], lr=1.0)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(2))
    for kwargs in [dict(lr=-1.0), dict(lr=1.0, momentum=1.0), dict(lr=1.0, eta=0.0)]:
        with pytest.raises(ValueError):
            LARS([a], **kwargs)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 5)
        self.ln = nn.LayerNorm(5)
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.tied = self.fc  # shared module: parameters listed once


def test_param_groups_split():
    net = _Net()
    groups = param_groups(net, weight_decay=1e-4)
    decay, exclude = groups
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(net.conv.weight), id(net.fc.weight)}
    expected = [net.bn.weight, net.bn.bias, net.gn.weight, net.gn.bias, net.fc.bias]
    expected += [net.ln.weight, net.ln.bias]
    assert ids(exclude["params"]) == ids(expected)
    assert len(exclude["params"]) == len(expected)
    assert decay["weight_decay"] == 1e-4 and "lars_exclude" not in decay
    assert exclude["lars_exclude"] is True and exclude["weight_decay"] == 0.0
    assert "weight_decay" not in param_groups(net)[0]
    opt = LARS(groups, lr=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(nn.Linear(2, 2).requires_grad_(False))


def test_lr_schedule_endpoints_and_midpoints():
    T, warm, peak = 1000, 100, 3.2
    assert lr_schedule(0, T, warm, peak) == 0.0
    assert lr_schedule(50, T, warm, peak) == pytest.approx(1.6)
    assert lr_schedule(warm, T, warm, peak) == pytest.approx(peak)
    assert lr_schedule(550, T, warm, peak) == pytest.approx(peak / 2)
    assert lr_schedule(325, T, warm, peak) == pytest.approx(peak * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_schedule(T, T, warm, peak) == pytest.approx(0.0, abs=1e-15)
    assert lr_schedule(T + 7, T, warm, peak) == pytest.approx(0.0, abs=1e-15)
    values = [lr_schedule(s, T, warm, peak) for s in range(T + 1)]
    assert max(values) == pytest.approx(peak)
    assert all(a <= b for a, b in zip(values[:warm], values[1 : warm + 1], strict=True))
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1 :], strict=False))
    # No warmup: cosine from the peak at step 0. Warmup filling the run: 0 at the end.
    assert lr_schedule(0, 10, 0, 1.0) == 1.0
    assert lr_schedule(10, 10, 10, 1.0) == 0.0 and lr_schedule(5, 10, 10, 1.0) == 0.5


def test_lr_schedule_validation():
    with pytest.raises(ValueError, match="warmup"):
        lr_schedule(0, 10, 11, 1.0)
    with pytest.raises(ValueError, match="step"):
        lr_schedule(-1, 10, 1, 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        lr_schedule(0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="peak"):
        lr_schedule(0, 10, 1, -1.0)


def test_ema_schedule():
    T = 31278  # official 100-epoch run
    assert ema_schedule(0, T) == pytest.approx(0.996)
    assert ema_schedule(T // 2, T) == pytest.approx(0.998, abs=1e-7)
    assert ema_schedule(T, T) == 1.0
    assert ema_schedule(T + 10, T) == 1.0
    assert ema_schedule(T // 4, 4 * (T // 4), base=0.99) == pytest.approx(
        1 - 0.01 * (1 + math.cos(math.pi / 4)) / 2
    )
    with pytest.raises(ValueError, match="base"):
        ema_schedule(0, T, base=1.5)
    with pytest.raises(ValueError, match="step"):
        ema_schedule(-3, T)
