"""Device-side augmentation (augment_on="device"): the batched colour pipeline equals the
per-image official one for the same drawn parameters (all 24 jitter orders, every branch), the
worker draws exactly the numbers the host path draws (so whole items agree), the drawn
parameters have the recipe's distributions, and the train-step entry point's contract."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from detcon.data.builtin import build_pretrain_dataset
from detcon.data.datasets import SyntheticDataset, collate
from detcon.data.device_augment import (
    apply_photometric,
    augment_on_device,
    batched_gaussian_blur,
    is_device_batch,
)
from detcon.data.photometric import (
    NUM_PARAMS,
    PARAM_APPLY,
    PARAM_BLUR,
    PARAM_BRIGHT,
    PARAM_CONTRAST,
    PARAM_GRAY,
    PARAM_HUE,
    PARAM_ORDER,
    PARAM_SAT,
    PARAM_SIGMA,
    PARAM_SOLARIZE,
    OfficialPhotometric,
    gaussian_blur,
)
from detcon.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TwoViewTransform

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
ATOL = 5e-5  # on the normalised scale (1 / 0.225 times the [0, 1] scale)


def _views(n, size=40, seed=0):
    """uint8 [n, 3, size, size] with smooth colour areas, saturated and gray pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 5, 5, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    x = x + 0.1 * torch.rand(n, 3, size, size, generator=g)
    x[:, :, :4, :4] = 1.0  # white corner (saturates under brightness)
    x[:, :, -4:, -4:] = 0.0  # black corner
    x[:, :, :4, -4:] = 0.5  # gray (max == min: HSV edge case)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _per_image(photo, views, params):
    """The per-image path: OfficialPhotometric.apply on each view, then mean/std."""
    out = [
        (photo.apply(v.float() / 255.0, p) - MEAN) / STD for v, p in zip(views, params, strict=True)
    ]
    return torch.stack(out)


@pytest.mark.parametrize("chunk", [1000, 5, None])  # whole batch (GPU default), 5, CPU default
@pytest.mark.parametrize("blur_p,solarize_p", [(1.0, 0.0), (0.1, 0.2), (0.5, 0.5)])
def test_batched_equals_per_image_for_drawn_parameters(blur_p, solarize_p, chunk):
    photo = OfficialPhotometric(blur_p, solarize_p)
    views = _views(64, seed=int(blur_p * 10))
    g = torch.Generator().manual_seed(3)
    params = torch.stack([photo.draw(g) for _ in range(len(views))])
    got = apply_photometric(views, params, chunk=chunk)
    want = _per_image(photo, views, params)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, atol=ATOL), (got - want).abs().max()
    assert (views == _views(64, seed=int(blur_p * 10))).all()  # input untouched


def _all_on(order, seed):
    """Parameters with every op on, the given jitter order and strong values."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(5, generator=g)
    p = torch.zeros(NUM_PARAMS)
    p[PARAM_APPLY] = 1.0
    p[PARAM_BRIGHT] = -0.4 + 0.8 * u[0]
    p[PARAM_CONTRAST] = 0.6 + 0.8 * u[1]
    p[PARAM_SAT] = 0.8 + 0.4 * u[2]
    p[PARAM_HUE] = -0.1 + 0.2 * u[3]
    p[PARAM_ORDER] = torch.tensor(order, dtype=torch.float32)
    p[PARAM_BLUR], p[PARAM_SIGMA] = 1.0, 0.1 + 1.9 * u[4]
    return p


def test_every_jitter_order_and_that_order_matters():
    orders = list(itertools.permutations(range(4)))  # all 24, each image its own
    photo = OfficialPhotometric(1.0, 0.0)
    views = _views(len(orders), seed=5)
    params = torch.stack([_all_on(o, i) for i, o in enumerate(orders)])
    got = apply_photometric(views, params, chunk=len(views))  # all 24 orders in one batch
    assert torch.allclose(got, _per_image(photo, views, params), atol=ATOL)
    assert torch.equal(apply_photometric(views, params, chunk=1), got)
    # the same values in a reversed order give another image: the test above can fail
    rev = params.clone()
    rev[:, PARAM_ORDER] = params[:, PARAM_ORDER].flip(-1)
    assert (apply_photometric(views, rev, chunk=24) - got).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_each_branch_alone_and_nothing_at_all():
    photo = OfficialPhotometric(1.0, 1.0)
    views = _views(6, seed=9)
    params = torch.zeros(6, NUM_PARAMS)
    params[:, PARAM_ORDER] = torch.arange(4.0)
    params[0, PARAM_APPLY.start + 3] = 1.0  # hue alone
    params[0, PARAM_HUE] = 0.07
    params[1, PARAM_GRAY] = 1.0
    params[2, PARAM_BLUR], params[2, PARAM_SIGMA] = 1.0, 1.7
    params[3, PARAM_SOLARIZE] = 1.0
    params[4, PARAM_APPLY.start + 1], params[4, PARAM_CONTRAST] = 1.0, 1.4  # contrast alone
    got = apply_photometric(views, params, chunk=6)  # row 5: no op, only the normalisation
    assert torch.allclose(got, _per_image(photo, views, params), atol=ATOL)
    plain = (views[5].float() / 255.0 - MEAN) / STD
    assert torch.allclose(got[5], plain, atol=1e-6)
    for i in range(5):  # every branch changed its image
        assert (got[i] - (views[i].float() / 255 - MEAN) / STD).abs().max() > 1e-2
    raw = apply_photometric(views, params, normalize=False)
    assert 0 <= raw.min() and raw.max() <= 1
    assert torch.allclose(raw[5], views[5].float() / 255.0)


def test_batched_blur_equals_per_image_blur_with_zero_padding():
    x = torch.rand(5, 3, 30, 26, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0])
    got = batched_gaussian_blur(x, sigma, 30 / 10)
    for i in range(5):
        assert torch.allclose(got[i], gaussian_blur(x[i], float(sigma[i]), 3.0), atol=1e-6)
    ones = batched_gaussian_blur(torch.ones(2, 3, 16, 16), torch.tensor([1.0, 2.0]), 7.0)
    assert ones[:, :, 0, 0].max() < 0.6 and torch.allclose(ones[:, :, 8, 8], torch.ones(2, 3))


def test_params_on_device_or_host_and_float_views_give_the_same():
    photo = OfficialPhotometric(0.5, 0.5)
    views = _views(8, seed=2)
    g = torch.Generator().manual_seed(1)
    params = torch.stack([photo.draw(g) for _ in range(8)])
    a = apply_photometric(views, params)
    b = apply_photometric(views.float(), params.double())  # 0..255 float views accepted
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_inputs_raise():
    views = _views(2, size=16)
    with pytest.raises(ValueError, match="params"):
        apply_photometric(views, torch.zeros(3, NUM_PARAMS))
    with pytest.raises(ValueError, match="views"):
        apply_photometric(views[0], torch.zeros(1, NUM_PARAMS))
    with pytest.raises(KeyError, match="augment_on"):
        augment_on_device({"view_a": views, "view_b": views}, "cpu")
    with pytest.raises(TypeError, match="uint8"):
        batch = {"view_a": views.float(), "view_b": views.float()}
        augment_on_device(
            {**batch, "photo_a": torch.zeros(2, 16), "photo_b": torch.zeros(2, 16)}, "cpu"
        )
    with pytest.raises(ValueError, match="official"):
        TwoViewTransform(32, photometric="torchvision", augment_on="device")
    with pytest.raises(ValueError, match="augment_on"):
        TwoViewTransform(32, augment_on="gpu")


def _photo_and_mask(seed=0, h=60, w=80):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
    mask = (np.arange(h)[:, None] // 15) * 10 + np.arange(w)[None, :] // 20
    return Image.fromarray(rgb), mask


@pytest.mark.parametrize("antialias", [True, False])
def test_worker_mode_draws_what_the_host_draws(antialias):
    """The same seed gives the same crops, masks and colour draws in both modes: device-side
    items equal host-side ones (antialias=True: both start from uint8 views; False: the host
    keeps the resize in float, the device mode rounds it, so compare on the rounded view)."""
    image, mask = _photo_and_mask()
    kw = dict(image_size=40, photometric="official", antialias=antialias)
    host, dev = TwoViewTransform(**kw), TwoViewTransform(**kw, augment_on="device")
    for seed in range(12):
        item = dev(image, mask, generator=torch.Generator().manual_seed(seed))
        assert item["view_a"].dtype == torch.uint8 and item["photo_a"].shape == (NUM_PARAMS,)
        want = host(image, mask, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(item["mask_a"], want["mask_a"])
        assert torch.equal(item["mask_b"], want["mask_b"])
        batch = augment_on_device(collate([item]), "cpu")
        assert not is_device_batch(batch) and set(batch) == set(want)
        if antialias:
            for v in ("view_a", "view_b"):
                assert torch.allclose(batch[v][0], want[v], atol=ATOL), (seed, v)
        else:  # host colour ops on the rounded view with the same generator state
            g = torch.Generator().manual_seed(seed)
            pix = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
            (xa, _), (xb, _) = (host.geometry(pix, mask, g) for _ in range(2))
            assert torch.equal(item["view_a"], xa.round().to(torch.uint8))
            ref_a = host.colour(xa.round(), 0, g)
            ref_b = host.colour(xb.round(), 1, g)
            assert torch.allclose(batch["view_a"][0], ref_a, atol=ATOL)
            assert torch.allclose(batch["view_b"][0], ref_b, atol=ATOL)
            assert (batch["view_a"][0] - want["view_a"]).abs().max() < 0.1  # rounding only


def test_drawn_parameter_distributions_match_the_recipe():
    """4000 draws per view: coin rates, value ranges and uniform jitter orders (the host path
    applies these same draws, OfficialPhotometric.__call__ = apply(draw))."""
    image, mask = _photo_and_mask(1, 24, 24)
    dev = TwoViewTransform(8, photometric="official", augment_on="device")
    g = torch.Generator().manual_seed(0)
    draws = {"a": [], "b": []}
    photos = [p for p in dev.photo]
    for _ in range(4000):
        draws["a"].append(photos[0].draw(g))
        draws["b"].append(photos[1].draw(g))
    item = dev(image, mask, generator=g)  # the transform's own draws have the same layout
    assert item["photo_a"].shape == item["photo_b"].shape == (NUM_PARAMS,)
    n = 4000
    tol = 4 * (0.25 / n) ** 0.5  # 4 standard errors of a rate
    for view, (blur_p, sol_p) in {"a": (1.0, 0.0), "b": (0.1, 0.2)}.items():
        p = torch.stack(draws[view])
        assert abs(p[:, PARAM_APPLY].mean() - 0.8) < tol  # jitter coin, all four ops on
        assert (p[:, PARAM_APPLY].std(dim=1) == 0).all()  # one coin for the block
        assert abs(p[:, PARAM_GRAY].mean() - 0.2) < tol
        assert abs(p[:, PARAM_BLUR].mean() - blur_p) < tol
        assert abs(p[:, PARAM_SOLARIZE].mean() - sol_p) < tol
        for k, lo, hi in [
            (PARAM_BRIGHT, -0.4, 0.4),
            (PARAM_CONTRAST, 0.6, 1.4),
            (PARAM_SAT, 0.8, 1.2),
            (PARAM_HUE, -0.1, 0.1),
            (PARAM_SIGMA, 0.1, 2.0),
        ]:
            v = p[:, k]
            assert lo <= v.min() and v.max() < hi
            assert abs(v.mean() - (lo + hi) / 2) < 4 * (hi - lo) / (12 * n) ** 0.5
        orders = [tuple(int(i) for i in o) for o in p[:, PARAM_ORDER]]
        counts = np.array([orders.count(o) for o in itertools.permutations(range(4))])
        assert counts.sum() == n and counts.min() > n / 24 * 0.6  # all 24, near uniform


def test_builder_switch_and_loader_batch():
    ds = build_pretrain_dataset("synthetic:4", "whole", 32, augment_on="device", synthetic_size=40)
    assert ds.transform.augment_on == "device" and ds.transform.photometric == "official"
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    batch = next(iter(loader))
    assert batch["view_a"].dtype == torch.uint8 and batch["photo_b"].shape == (4, NUM_PARAMS)
    out = augment_on_device(batch, "cpu", channels_last=True)
    assert out["view_a"].dtype == torch.float32 and out["view_a"].shape == (4, 3, 32, 32)
    assert out["view_b"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out["mask_a"], batch["mask_a"]) and torch.equal(out["index"], batch["index"])
    none = SyntheticDataset(
        2, 40, transform=TwoViewTransform(32, photometric="none", augment_on="device")
    )
    host = SyntheticDataset(2, 40, transform=TwoViewTransform(32, photometric="none"))
    torch.manual_seed(0)
    a = augment_on_device(collate([none[0]]), "cpu")
    torch.manual_seed(0)
    b = host[0]
    assert torch.equal(a["mask_a"][0], b["mask_a"])
    assert (a["view_a"][0] - b["view_a"]).abs().max() < 0.5 / 255 / 0.224 + 1e-5  # rounding
