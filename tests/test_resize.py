"""The official (TensorFlow, non-antialiased) bicubic resize of the views, and the option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detcon.data.transforms import TwoViewTransform, paired_geometry, resize_bicubic_tf

FIXTURE = Path(__file__).parent / "fixtures" / "tf_bicubic.npz"


def _slow_reference(img: np.ndarray, size: int) -> np.ndarray:
    """Loops from the definition: half-pixel centres, Keys cubic a=-0.5, out-of-image taps
    dropped and the remaining weights renormalised; rows first, then columns."""

    def kernel(x, a=-0.5):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    def resize_axis(arr, n_out):  # along axis 0
        n_in = arr.shape[0]
        out = np.zeros((n_out,) + arr.shape[1:])
        for i in range(n_out):
            centre = (i + 0.5) * n_in / n_out - 0.5
            base = int(np.floor(centre))
            taps = [(j, kernel(centre - j)) for j in range(base - 1, base + 3) if 0 <= j < n_in]
            total = sum(w for _, w in taps)
            out[i] = sum(w * arr[j] for j, w in taps) / total
        return out

    c = img.astype(np.float64)
    c = resize_axis(c.transpose(1, 0, 2), size).transpose(1, 0, 2)  # H
    return resize_axis(c.transpose(2, 1, 0), size).transpose(2, 1, 0)  # W


@pytest.mark.parametrize("shape,size", [((3, 23, 31), 8), ((3, 9, 7), 16), ((1, 5, 6), 5)])
def test_matches_slow_reference(shape, size):
    x = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
    got = resize_bicubic_tf(torch.from_numpy(x), size).numpy()
    np.testing.assert_allclose(got, _slow_reference(x, size), rtol=0, atol=2e-3)


def test_matches_jax_fixture():
    """JAX's antialias=False cubic resize (scripts/fixtures/make_tf_resize_fixture.py)."""
    data = np.load(FIXTURE)
    for name in ("down", "up"):
        x, want = data[f"{name}_in"], data[f"{name}_out"]
        got = resize_bicubic_tf(torch.from_numpy(x), want.shape[-1]).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)


def test_hand_cases():
    # a constant image stays constant, and an identity-size resize is the identity
    torch.testing.assert_close(
        resize_bicubic_tf(torch.full((3, 9, 11), 7.0), 4), torch.full((3, 4, 4), 7.0)
    )
    x = torch.rand(2, 6, 6) * 255
    torch.testing.assert_close(resize_bicubic_tf(x, 6), x)
    # 4 -> 2 along a ramp 0, 1, 2, 3: output centres at 0.5 and 2.5, taps -1..2 and 1..4 with
    # the out-of-image tap dropped. Keys weights at distances (1.5, 0.5, 0.5, 1.5) are
    # (-0.0625, 0.5625, 0.5625, -0.0625): at 0.5 only taps 0, 1, 2 remain, weights sum 1.0625:
    # (0.5625 * 0 + 0.5625 * 1 - 0.0625 * 2) / 1.0625 = 0.411764...
    ramp = torch.arange(4.0).reshape(1, 1, 4).expand(1, 4, 4)
    got = resize_bicubic_tf(ramp, 2)[0, 0]
    assert got[0].item() == pytest.approx(0.4375 / 1.0625, abs=1e-6)
    assert got[1].item() == pytest.approx(3 - 0.4375 / 1.0625, abs=1e-6)


def test_no_antialias_is_sharper_and_option_keeps_torch_path():
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 160, 160, generator=g) * 255).to(torch.uint8)
    mask = np.zeros((160, 160), np.int64)
    box = (0, 0, 160, 160)
    sharp, _ = paired_geometry(img, mask, box, False, 64)  # official: 2.5x downscale, no filter
    smooth, _ = paired_geometry(img, mask, box, False, 64, antialias=True)
    assert sharp.dtype == torch.float32 and smooth.dtype == torch.uint8
    assert 0 <= float(sharp.min()) and float(sharp.max()) <= 255
    assert sharp.std() > 1.5 * smooth.float().std()  # noise survives without the low-pass
    t = TwoViewTransform(32, photometric="torchvision")  # uint8 ops still get uint8 pixels
    out = t(Image.fromarray(img.permute(1, 2, 0).numpy()), mask)
    assert out["view_a"].shape == (3, 32, 32) and torch.isfinite(out["view_a"]).all()
    assert "antialias=False" in repr(t) and TwoViewTransform(32, antialias=True).antialias
