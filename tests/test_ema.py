import copy

import pytest
import torch
from torch import nn

from detcon.model import ema_update_


def _pair(seed=0):
    torch.manual_seed(seed)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(8, 3))  # online BN buffers now differ from target's
    online(torch.randn(8, 3))
    for p in target.parameters():
        p.requires_grad_(False)
    return target, online


def _snap(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_tau_zero_copies_params():
    target, online = _pair()
    ema_update_(target, online, 0.0)
    for (n, t), (_, o) in zip(target.named_parameters(), online.named_parameters(), strict=True):
        assert torch.equal(t, o), n
    assert not any(p.requires_grad for p in target.parameters())


def test_tau_one_freezes():
    target, online = _pair()
    before = _snap(target)
    ema_update_(target, online, 1.0, buffers="keep")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_tau_half_is_midpoint_by_hand():
    target, online = _pair()
    t0 = target[0].weight.clone()
    o0 = online[0].weight.clone()
    ema_update_(target, online, 0.5)
    assert torch.allclose(target[0].weight, (t0 + o0) / 2, atol=1e-7)
    ema_update_(target, online, 0.75)  # t <- 0.75 t + 0.25 o
    assert torch.allclose(target[0].weight, 0.75 * (t0 + o0) / 2 + 0.25 * o0, atol=1e-7)
    assert torch.equal(online[0].weight, o0)  # online untouched


def test_buffer_policies():
    target, online = _pair()
    bn_t, bn_o = target[1], online[1]
    mean_t, mean_o = bn_t.running_mean.clone(), bn_o.running_mean.clone()

    ema_update_(target, online, 0.5)  # default "keep"
    assert torch.equal(bn_t.running_mean, mean_t) and bn_t.num_batches_tracked.item() == 0

    ema_update_(target, online, 0.5, buffers="ema")
    assert torch.allclose(bn_t.running_mean, (mean_t + mean_o) / 2, atol=1e-7)
    assert bn_t.num_batches_tracked.item() == 2  # integer buffer copied, not averaged

    ema_update_(target, online, 0.5, buffers="copy")
    assert torch.equal(bn_t.running_mean, mean_o)
    assert torch.equal(bn_t.running_var, bn_o.running_var)

    with pytest.raises(ValueError, match="buffers policy"):
        ema_update_(target, online, 0.5, buffers="average")


def test_mismatch_and_tau_errors():
    target, online = _pair()
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\]"):
        ema_update_(target, online, 1.5)
    with pytest.raises(ValueError, match="tau"):
        ema_update_(target, online, float("nan"))
    other = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2, bias=False))
    with pytest.raises(ValueError, match=r"shape mismatches=\['0.weight"):
        ema_update_(other, online, 0.5)
    renamed = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=True))
    with pytest.raises(ValueError, match=r"only in target=\['2.bias'\]"):
        ema_update_(renamed, online, 0.5)
    with pytest.raises(ValueError, match="same module"):
        ema_update_(online, online, 0.5)


def test_unwraps_compiled_style_wrapper():
    target, online = _pair()

    class Wrapper(nn.Module):  # mimics torch.compile's OptimizedModule (`_orig_mod`)
        def __init__(self, mod):
            super().__init__()
            self._orig_mod = mod

    ema_update_(target, Wrapper(online), 0.0)
    assert torch.equal(target[0].weight, online[0].weight)
