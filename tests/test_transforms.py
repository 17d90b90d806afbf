"""TwoViewTransform: masks stay aligned with the image through crop/flip/resize; colour ops
never touch masks; crop windows follow the official (clipped) or torchvision rule."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from detcon.data.transforms import (
    TwoViewTransform,
    _photometric,
    official_crop_box,
    paired_geometry,
    torchvision_crop_box,
)

H, W = 48, 64  # non-square, so a transposed or swapped axis cannot pass


def _coordinate_pair():
    """Image whose red = x ramp and green = y ramp; mask id = y * W + x (pixel coordinates)."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[..., 0] = np.round(x * 255 / (W - 1))
    img[..., 1] = np.round(y * 255 / (H - 1))
    return Image.fromarray(img), (y * W + x).astype(np.int64)


@pytest.mark.parametrize("crop", ["official", "torchvision"])
@pytest.mark.parametrize("size", [32, 96])  # downscaling and upscaling crops
def test_mask_ids_label_the_same_pixels_after_crop_and_flip(crop, size):
    image, mask = _coordinate_pair()
    tf = TwoViewTransform(size, crop=crop, photometric=False, normalize=False)
    gen = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(12):
        item = tf(image, mask, generator=gen)
        for key in "ab":
            view = item[f"view_{key}"].numpy() * 255  # [3, S, S]
            m = item[f"mask_{key}"].numpy()
            assert m.dtype == np.int64 and m.shape == (size, size)
            x_img = view[0] * (W - 1) / 255  # position the image pixel came from
            y_img = view[1] * (H - 1) / 255
            err_x = np.abs(x_img - m % W)
            err_y = np.abs(y_img - m // W)
            # bicubic vs nearest differ by at most ~half a source pixel (+ edge clamping)
            assert err_x.max() < 1.0 and err_y.max() < 1.0, (err_x.max(), err_y.max())
            assert err_x.mean() < 0.35 and err_y.mean() < 0.35
            flips += int(m[0, 0] % W > m[0, -1] % W)
    assert 0 < flips < 24  # both orientations were exercised


def test_flip_is_one_coin_for_image_and_mask():
    image, mask = _coordinate_pair()
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    for antialias, dtype in ((False, torch.float32), (True, torch.uint8)):
        img, m = paired_geometry(pixels, mask, (0, 0, H, W), True, 16, antialias)
        assert img.dtype == dtype and img.shape == (3, 16, 16)
        assert m[0, 0] % W > m[0, -1] % W and img[0, 0, 0] > img[0, 0, -1]


@pytest.mark.parametrize("mode", ["official", "torchvision"])
def test_colour_ops_leave_masks_untouched(mode):
    image, mask = _coordinate_pair()
    on = TwoViewTransform(32, photometric=mode, blur_p=(1.0, 1.0), solarize_p=(1.0, 1.0))
    off = TwoViewTransform(32, photometric=False)
    torch.manual_seed(0)
    a = on(image, mask, generator=torch.Generator().manual_seed(5))
    b = off(image, mask, generator=torch.Generator().manual_seed(5))
    for key in ("mask_a", "mask_b"):
        assert torch.equal(a[key], b[key])
    assert not torch.allclose(a["view_a"], b["view_a"])  # colour ops did run on the image


def test_large_ids_survive_without_wrap():
    image = Image.new("RGB", (40, 30))
    mask = (np.arange(30 * 40).reshape(30, 40) * 97).astype(np.int64)  # ids up to ~116k
    item = TwoViewTransform(20, photometric=False)(image, mask)
    for key in ("mask_a", "mask_b"):
        assert item[key].dtype == torch.int64 and item[key].max() > 65535
        assert set(item[key].unique().tolist()) <= set(mask.ravel().tolist())


def test_output_contract_and_normalisation():
    image, mask = _coordinate_pair()
    item = TwoViewTransform(32)(image, mask)
    assert set(item) == {"view_a", "view_b", "mask_a", "mask_b"}
    assert item["view_a"].dtype == torch.float32 and item["view_a"].shape == (3, 32, 32)
    assert item["view_a"].min() < 0  # mean-subtracted
    with pytest.raises(ValueError, match="does not match"):
        TwoViewTransform(32)(image, mask[:10])
    with pytest.raises(ValueError, match="crop"):
        TwoViewTransform(32, crop="random")


def test_official_crop_is_clipped_without_rejection():
    g = torch.Generator().manual_seed(0)
    # area 1.0 and ratio 4/3 on a square: w = round(sqrt(1e4 * 4/3)) = 115 -> clipped to 100
    top, left, h, w = official_crop_box(
        100, 100, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), generator=g
    )
    assert (w, h, left) == (100, round(math.sqrt(1e4 * 3 / 4)), 0) and 0 <= top <= 100 - h
    for _ in range(200):
        top, left, h, w = official_crop_box(30, 50, generator=g)
        assert 1 <= h <= 30 and 1 <= w <= 50 and top + h <= 30 and left + w <= 50
    for _ in range(50):
        top, left, h, w = torchvision_crop_box(30, 50, generator=g)
        assert top + h <= 30 and left + w <= 50 and 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.2


def test_blur_kernel_scales_with_image_size():
    def kernel(size):
        ops = _photometric(size, 1.0, 0.0, 0.8, 0.2).transforms
        return ops[2].transforms[0].kernel_size

    assert kernel(224) == (23, 23) and kernel(64) == (7, 7) and kernel(16) == (1, 1)


@pytest.mark.parametrize("shape", [(3, 420, 350), (3, 301, 999), (1, 700, 180)])
def test_large_crop_gather_resize_equals_dense_matrices(shape):
    """Crops above the size threshold take the 4-tap gather path: same weights as the banded
    matrices (checked against the slow reference in test_resize.py), so the same output."""
    from detcon.data.transforms import _GATHER_ABOVE_PIXELS, _keys_matrix, resize_bicubic_tf

    assert shape[1] * shape[2] > _GATHER_ABOVE_PIXELS
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    for size in (224, 57):
        mh, mw = (_keys_matrix(n, size).double() for n in shape[1:])
        dense = mh @ x.double() @ mw.T
        got = resize_bicubic_tf(x, size)
        assert got.dtype == torch.float32 and got.shape == (shape[0], size, size)
        assert torch.allclose(got.double(), dense, atol=2e-4), (got - dense).abs().max()


def test_window_taps_at_full_resolution_are_the_crop_taps():
    from detcon.data.transforms import _keys_taps, window_taps

    for n_in, top, h, size in [(100, 0, 100, 224), (300, 37, 180, 64), (50, 10, 13, 7)]:
        index, weight = window_taps(n_in, top, h, size, 1.0)
        ref_index, ref_weight = _keys_taps(h, size)
        live = ref_weight != 0  # clamped duplicate taps carry no weight in either
        assert torch.equal((index - top)[live], ref_index[live])
        assert torch.allclose(weight, ref_weight, atol=1e-6)


def _jpeg_with_edges(path, h=960, w=1280):
    """A smooth JPEG with sharp vertical edges every 160 px; mask id = column band."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.where((x // 160) % 2 == 0, 230, 20)
    img[..., 1] = np.round(y * 255 / (h - 1))
    img[..., 2] = 128
    Image.fromarray(img).save(path, quality=95)
    return (x // 160).astype(np.int64)


def test_jpeg_draft_keeps_geometry_and_masks(tmp_path):
    from detcon.data.decode import load_image, load_image_draft

    path = tmp_path / "edges.jpg"
    mask = _jpeg_with_edges(path)
    assert load_image_draft(path, 4)[1] == 4 and load_image_draft(path, 4)[0].size == (320, 240)
    kw = dict(image_size=48, photometric="none", normalize=False, scale=(0.3, 1.0))
    full, draft = TwoViewTransform(**kw), TwoViewTransform(**kw, jpeg_draft=True)
    reduced = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        windows = draft.windows(960, 1280, torch.Generator().manual_seed(seed))
        reduced += draft.draft_scale(windows) > 1
        a = full(load_image(path), mask, g)
        b = draft.from_file(path, mask, torch.Generator().manual_seed(seed))
        for v, m in (("view_a", "mask_a"), ("view_b", "mask_b")):
            assert torch.equal(a[m], b[m])  # masks: full resolution, same windows
            diff = (a[v] - b[v]).abs() * 255
            assert diff.mean() < 3.0, (seed, v, diff.mean())  # smoother, same place
            # red is high exactly on the even bands of the mask: the edges did not move
            red = b[v][0] * 255
            even = (a[m] % 2 == 0).float()
            assert (red > 125).float().eq(even).float().mean() > 0.9
    assert reduced >= 3  # the crops were large enough to decode reduced in most draws


def test_from_file_without_draft_or_on_png_is_the_ordinary_path(tmp_path):
    from detcon.data.decode import load_image

    image, mask = _coordinate_pair()
    path = tmp_path / "c.png"
    image.save(path)
    for t in (TwoViewTransform(16), TwoViewTransform(16, jpeg_draft=True)):
        a = t(load_image(path), mask, torch.Generator().manual_seed(1))
        b = t.from_file(path, mask, torch.Generator().manual_seed(1))
        assert all(torch.equal(a[k], b[k]) for k in a)
    dev = TwoViewTransform(16, jpeg_draft=True, augment_on="device")
    item = dev.from_file(path, mask, torch.Generator().manual_seed(1))
    assert item["view_a"].dtype == torch.uint8 and "photo_b" in item
    with pytest.raises(ValueError, match="antialias"):
        TwoViewTransform(16, jpeg_draft=True, antialias=True)
    with pytest.raises(ValueError, match="mask shape"):
        TwoViewTransform(16, jpeg_draft=True).from_file(path, mask[:-1], None)
