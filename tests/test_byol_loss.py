"""BYOL's regression loss (``detcon.losses.byol_loss``) against hand cases and a slow reference."""

from __future__ import annotations

import math

import pytest
import torch

from detcon.losses import byol_loss


def _reference(p1, p2, t1, t2):
    """Row by row from the definition: ||x/|x| - y/|y| ||^2 with |x| = sqrt(max(sum x^2, 1e-12))."""

    def n(x):
        return x / math.sqrt(max(float((x * x).sum()), 1e-12))

    total = 0.0
    for p, t in ((p1, t2), (p2, t1)):
        total += sum(float(((n(p[b]) - n(t[b])) ** 2).sum()) for b in range(p.shape[0])) / len(p)
    return total


def test_hand_cases():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    zero = torch.zeros(1, 2)
    # identical directions (any scale): 0 per direction
    assert byol_loss(e1, e1, 3 * e1, 0.5 * e1).item() == pytest.approx(0.0, abs=1e-7)
    # opposite: ||e1 - (-e1)||^2 = 4 per direction, summed over both = 8
    assert byol_loss(e1, e1, -e1, -e1).item() == pytest.approx(8.0)
    # orthogonal: 2 per direction
    assert byol_loss(e1, e1, e2, e2).item() == pytest.approx(4.0)
    # a zero prediction stays zero under the official normalisation: ||0 - e1||^2 = 1
    assert byol_loss(zero, e1, e1, e1).item() == pytest.approx(1.0 + 0.0)
    # the directions pair pred_a with target_b and pred_b with target_a
    assert byol_loss(e1, e2, e2, e1).item() == pytest.approx(0.0, abs=1e-7)
    assert byol_loss(e1, e2, e1, e2).item() == pytest.approx(4.0)


def test_mean_over_batch_matches_reference():
    g = torch.Generator().manual_seed(0)
    p1, p2, t1, t2 = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(4))
    p1[2] = 0  # one zero row
    got = byol_loss(p1, p2, t1, t2).item()
    assert got == pytest.approx(_reference(p1, p2, t1, t2), rel=1e-12)
    # = sum over directions of mean(2 - 2 cos) for non-zero rows
    cos = torch.nn.functional.cosine_similarity
    want = (2 - 2 * cos(p2, t1)).mean() + (
        2 - 2 * cos(p1[[0, 1, 3, 4]], t2[[0, 1, 3, 4]])
    ).sum() / 5
    assert got == pytest.approx(float(want + 1.0 / 5), rel=1e-10)  # the zero row gives 1


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(byol_loss, xs)


def test_float32_under_autocast_and_bad_shapes():
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(x, torch.eye(8))  # bf16 under autocast
        assert y.dtype == torch.bfloat16
        loss = byol_loss(y, y, x, x)
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError, match="four"):
        byol_loss(x, x, x, x[:2])
    with pytest.raises(ValueError, match="four"):
        byol_loss(x[None], x[None], x[None], x[None])
