"""Official (dm_pix) photometric ops: each op against a slow per-pixel reference written from its
definition (colorsys for HSV), hand-checked pixels, clipping after every op, zero-padded blur,
masks untouched, determinism, and the config / transform validation."""

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from detcon.config import ConfigError, load_config, resolve
from detcon.data.photometric import (
    OfficialPhotometric,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    gaussian_kernel,
    hsv_to_rgb,
    rgb_to_hsv,
    solarize,
    to_grayscale,
)
from detcon.data.transforms import TwoViewTransform


def _image(seed=0, h=5, w=6):
    """float32 [3, h, w] in [0, 1] with a few exact 0 / 1 / gray pixels (edge cases of HSV)."""
    x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
    x[:, 0, 0] = 0.0  # black
    x[:, 0, 1] = 1.0  # white
    x[:, 0, 2] = 0.4  # gray (max == min)
    x[:, 0, 3] = torch.tensor([1.0, 0.0, 0.0])  # pure red
    return x


def _per_pixel(x, fn):
    """Apply ``fn(r, g, b) -> (r, g, b)`` to every pixel of [3, H, W] (slow reference)."""
    out = torch.empty_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j] = torch.tensor(fn(*x[:, i, j].tolist()))
    return out


def ref_contrast(x, f):
    c, h, w = x.shape
    out = torch.empty_like(x)
    for k in range(c):
        mean = sum(x[k, i, j].item() for i in range(h) for j in range(w)) / (h * w)
        out[k] = f * (x[k] - mean) + mean
    return out


def ref_saturation(x, f):
    def fn(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb(h, min(max(s * f, 0.0), 1.0), v)

    return _per_pixel(x, fn)


def ref_hue(x, delta):
    def fn(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)

    return _per_pixel(x, fn)


def ref_blur(x, sigma, taps):
    """Direct 2-D convolution with the outer-product kernel, zeros outside the image."""
    r = taps // 2
    t = np.arange(-r, r + 1)
    k1 = np.exp(-(t**2) / (2 * sigma**2))
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    a = x.double().numpy()
    c, h, w = a.shape
    padded = np.zeros((c, h + 2 * r, w + 2 * r))
    padded[:, r : r + h, r : r + w] = a
    out = np.zeros_like(a)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = (padded[:, i : i + taps, j : j + taps] * k2).sum(axis=(1, 2))
    return torch.from_numpy(out).float()


def test_brightness_adds_and_contrast_uses_per_channel_mean():
    x = _image()
    assert torch.equal(adjust_brightness(x, 0.25), x + 0.25)
    for f in (0.6, 1.0, 1.37):
        assert torch.allclose(adjust_contrast(x, f), ref_contrast(x, f), atol=1e-6)
    # per-channel (not grayscale) mean: a constant-per-channel image is a fixed point
    flat = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1).expand(3, 4, 4)
    assert torch.allclose(adjust_contrast(flat, 1.4), flat)


@pytest.mark.parametrize("f", [0.0, 0.8, 1.19, 3.0])
def test_saturation_matches_hsv_reference(f):
    x = _image(1)
    assert torch.allclose(adjust_saturation(x, f), ref_saturation(x, f), atol=1e-6)


@pytest.mark.parametrize("delta", [-0.1, 0.037, 0.5, 1 / 3])
def test_hue_matches_hsv_reference_and_round_trips(delta):
    x = _image(2)
    assert torch.allclose(adjust_hue(x, delta), ref_hue(x, delta), atol=1e-5)
    assert torch.allclose(hsv_to_rgb(*rgb_to_hsv(x)), x, atol=1e-6)
    assert torch.allclose(adjust_hue(adjust_hue(x, delta), -delta), x, atol=1e-5)


def test_hue_hand_checked_pixels():
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert torch.allclose(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1))
    assert torch.allclose(adjust_hue(red, 1 / 6), torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1))
    assert torch.allclose(
        adjust_hue(red, -1 / 3), torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1), atol=1e-6
    )
    h, s, v = rgb_to_hsv(torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1))  # orange: 30 degrees
    assert torch.allclose(torch.stack([h, s, v]).flatten(), torch.tensor([1 / 12, 1.0, 0.5]))


def test_grayscale_and_solarize():
    x = _image(3)
    g = to_grayscale(x)
    expected = 0.2989 * x[0] + 0.5870 * x[1] + 0.1140 * x[2]
    assert g.shape == x.shape and all(torch.allclose(g[c], expected) for c in range(3))
    v = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.8, 1.0]).view(1, 1, 6).expand(3, 1, 6)
    assert torch.allclose(solarize(v)[0, 0], torch.tensor([0.0, 0.2, 0.49, 0.5, 0.2, 0.0]))


def test_blur_kernel_and_zero_padding():
    k = gaussian_kernel(1.3, 224 / 10)
    assert k.numel() == 23 and abs(k.sum().item() - 1) < 1e-6 and torch.equal(k, k.flip(0))
    assert gaussian_kernel(1.0, 64 / 10).numel() == 7 and gaussian_kernel(1.0, 16 / 10).numel() == 1
    x = _image(4, 7, 9)
    assert torch.allclose(gaussian_blur(x, 1.3, 5.0), ref_blur(x, 1.3, 5), atol=1e-6)
    # zero ('SAME') padding: a white image darkens at the border and stays white inside
    ones = torch.ones(3, 16, 16)
    out = gaussian_blur(ones, 1.5, 7.0)
    k = gaussian_kernel(1.5, 7.0)
    assert torch.allclose(out[:, 8, 8], torch.ones(3))
    corner = k[3:].sum() ** 2  # only the taps over the image survive, in both directions
    assert torch.allclose(out[:, 0, 0], corner.expand(3)) and corner < 0.5


def _reference_pipeline(x, seed, p):
    """The official per-view recipe from the definitions above, reading the same draws
    (documented layout: 9 uniforms, then a permutation of the 4 jitter ops)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(9, generator=g).tolist()
    order = torch.randperm(4, generator=g).tolist()
    ops = [
        lambda y: y + (-0.4 + 0.8 * u[2]),
        lambda y: ref_contrast(y, 0.6 + 0.8 * u[3]),
        lambda y: ref_saturation(y, 0.8 + 0.4 * u[4]),
        lambda y: ref_hue(y, -0.1 + 0.2 * u[5]),
    ]
    if u[0] < p.jitter_p:
        for i in order:
            x = ops[i](x).clamp(0, 1)  # clip after every op
    if u[1] < p.gray_p:
        x = to_grayscale(x)
    if u[6] < p.blur_p:
        x = ref_blur(x, 0.1 + 1.9 * u[7], 2 * int(x.shape[1] / 10 / 2) + 1)
    if u[8] < p.solarize_p:
        x = torch.where(x >= 0.5, 1 - x, x)
    return x.clamp(0, 1)


@pytest.mark.parametrize("gray_p,solarize_p", [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5)])
def test_pipeline_matches_reference_with_clipping_after_every_op(gray_p, solarize_p):
    photo = OfficialPhotometric(blur_p=1.0, solarize_p=solarize_p, jitter_p=1.0, gray_p=gray_p)
    for seed in range(6):
        x = _image(seed, 24, 20)  # 24 px tall: a 3-tap blur kernel
        x[:, 12:, :] = x[:, 12:, :] * 0.1 + 0.9  # near-white half: brightness saturates it
        got = photo(x.clone(), torch.Generator().manual_seed(seed))
        want = _reference_pipeline(x, seed, photo)
        assert got.dtype == torch.float32 and got.shape == x.shape
        assert torch.allclose(got, want, atol=2e-5), (seed, (got - want).abs().max())
        assert 0 <= got.min() and got.max() <= 1


def test_intermediate_clip_matters():
    """Brightness then contrast: clipping in between changes the result (so the test above
    can tell a pipeline that clips only at the end)."""
    x = torch.linspace(0, 1, 12).view(1, 3, 4).expand(3, 3, 4)
    clipped = adjust_contrast(adjust_brightness(x, 0.4).clamp(0, 1), 1.4).clamp(0, 1)
    late = adjust_contrast(adjust_brightness(x, 0.4), 1.4).clamp(0, 1)
    assert not torch.allclose(clipped, late, atol=1e-3)


def test_transform_official_mode_masks_untouched_and_deterministic():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image, mask = Image.fromarray(rgb), np.arange(30 * 40).reshape(30, 40)
    official = TwoViewTransform(32, photometric="official", normalize=False)
    plain = TwoViewTransform(32, photometric=False, normalize=False)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    for which in (1, 0):
        x1, m1 = official.view(pixels, mask, which, torch.Generator().manual_seed(3))
        x0, m0 = plain.view(pixels, mask, which, torch.Generator().manual_seed(3))
        assert torch.equal(m1, m0) and m1.dtype == torch.int64  # same geometry, mask untouched
        assert x1.dtype == torch.float32 and 0 <= x1.min() and x1.max() <= 1
    assert not torch.allclose(x1, x0)  # view a (blur p = 1): the colour ops did run
    a = official(image, mask, generator=torch.Generator().manual_seed(7))
    b = official(image, mask, generator=torch.Generator().manual_seed(7))
    c = official(image, mask, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["view_a"], c["view_a"])
    assert "official" in repr(official)


def test_mode_validation_in_transform_and_config():
    assert TwoViewTransform(32).photometric == "official"  # the official recipe by default
    assert TwoViewTransform(32, photometric=True).photometric == "official"
    assert TwoViewTransform(32, photometric=False).photo is None
    with pytest.raises(ValueError, match="official.*torchvision.*none"):
        TwoViewTransform(32, photometric="dm_pix")
    assert load_config().data.photometric == "official"
    assert load_config(overrides=["data.photometric=torchvision"]).data.photometric == "torchvision"
    with pytest.raises(ConfigError, match="data.photometric.*official.*torchvision.*none"):
        load_config(overrides=["data.photometric=offical"])
    cfg = load_config(overrides=["data.batch_size=2"])
    cfg.data.photometric = "bogus"  # set directly: resolve still checks it
    with pytest.raises(ConfigError, match="data.photometric"):
        resolve(cfg, dataset_size=8)
