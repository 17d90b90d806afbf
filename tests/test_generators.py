"""Generators: output dtype, shape and contiguous id range; specs; COCO ground truth."""

import json
import sys

import numpy as np
import pytest

from detcon.masks.generators import (
    CallableGenerator,
    FHGenerator,
    GridGenerator,
    WholeImageGenerator,
    build_generator,
    relabel_contiguous,
)


def _image(h=64, w=64, seed=0, noise=6):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2] = (200, 30, 30)  # four flat quadrants + a little noise
    img[: h // 2, w // 2 :] = (30, 200, 30)
    img[h // 2 :, : w // 2] = (30, 30, 200)
    img[h // 2 :, w // 2 :] = (220, 220, 40)
    return np.clip(img + rng.integers(0, noise, img.shape), 0, 255).astype(np.uint8)


def _assert_contiguous(labels, shape):
    assert labels.dtype == np.int32 and labels.shape == shape
    n = int(labels.max()) + 1
    assert labels.min() == 0 and np.array_equal(np.unique(labels), np.arange(n))


@pytest.mark.parametrize(
    "gen",
    [
        FHGenerator(scale=100, min_size=20),
        FHGenerator(max_side=32, min_size=40),
        GridGenerator(),
        GridGenerator(2, 3),
        WholeImageGenerator(),
    ],
    ids=["fh", "fh-max-side", "grid4", "grid2x3", "whole"],
)
@pytest.mark.parametrize("shape", [(64, 48), (1, 1), (3, 2)])
def test_every_generator_dtype_and_contiguous_ids(gen, shape):
    labels = gen(_image(*shape))
    _assert_contiguous(labels, shape)
    assert isinstance(gen.name, str) and isinstance(gen.params, dict)
    json.dumps(gen.params)  # the cache key must be serialisable


def test_fh_matches_skimage_directly():
    from skimage.segmentation import felzenszwalb

    img = _image()
    ours = FHGenerator(scale=100, sigma=0.8, min_size=20)(img)
    ref = felzenszwalb(img, scale=100, sigma=0.8, min_size=20)
    assert np.array_equal(ours, relabel_contiguous(ref))
    flat = _image(noise=1)
    assert FHGenerator(scale=100, min_size=300)(flat).max() + 1 == 4  # the four quadrants
    assert FHGenerator().params == {"scale": 1000.0, "sigma": 0.8, "min_size": 1000}


def test_fh_max_side_upsamples_to_full_resolution():
    img = _image(64, 64, noise=1)
    gen = FHGenerator(scale=100, min_size=400, max_side=32)  # min_size 400 -> 100 at half side
    labels = gen(img)
    _assert_contiguous(labels, (64, 64))
    assert labels.max() + 1 == 4
    # quadrant boundaries land where the full-resolution ones are
    for rows in (slice(0, 28), slice(36, 64)):  # quadrant interiors (boundaries may shift 1-2 px)
        for cols in (slice(0, 28), slice(36, 64)):
            assert len(np.unique(labels[rows, cols])) == 1
    assert len({labels[0, 0], labels[0, 63], labels[63, 0], labels[63, 63]}) == 4
    assert gen.params["max_side"] == 32
    # no reduction when the image is already small enough
    assert np.array_equal(
        FHGenerator(scale=100, min_size=20, max_side=64)(img),
        FHGenerator(scale=100, min_size=20)(img),
    )


def test_grid_cells_are_equal_blocks():
    labels = GridGenerator(4)(_image(64, 64))
    assert labels.max() == 15
    expected = (np.arange(64)[:, None] // 16) * 4 + np.arange(64)[None, :] // 16
    assert np.array_equal(labels, expected)


def test_whole_image_is_zeros():
    assert not WholeImageGenerator()(_image()).any()


def test_callable_generator_relabels_and_validates():
    gen = CallableGenerator(lambda im: np.where(im[..., 0] > 100, 70000, 5), "thresh", {"t": 100})
    labels = gen(_image())
    _assert_contiguous(labels, (64, 64))
    assert labels.max() == 1 and gen.name == "thresh" and gen.params == {"t": 100}
    bad = CallableGenerator(lambda im: im[..., 0].astype(float), "bad")
    with pytest.raises(ValueError, match="integer labels"):
        bad(_image())


def test_callable_slic():
    from skimage.segmentation import slic

    gen = CallableGenerator(lambda im: slic(im, n_segments=8, start_label=0), "slic", {"n": 8})
    _assert_contiguous(gen(_image()), (64, 64))


def test_input_validation():
    with pytest.raises(ValueError, match="uint8"):
        GridGenerator()(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        GridGenerator()(np.zeros((4, 4), dtype=np.uint8))


def test_build_generator_specs():
    g = build_generator("fh:scale=500,min_size=200")
    assert isinstance(g, FHGenerator) and g.params["scale"] == 500 and g.params["min_size"] == 200
    assert build_generator("grid:2").params == {"rows": 2, "cols": 2}
    assert build_generator({"name": "grid", "rows": 3, "cols": 1}).params == {"rows": 3, "cols": 1}
    assert isinstance(build_generator("whole"), WholeImageGenerator)
    assert build_generator(g) is g
    with pytest.raises(ValueError, match="unknown mask generator"):
        build_generator("mcg")
    with pytest.raises(ValueError, match="bad parameters"):
        build_generator("fh:colour=3")
    with pytest.raises(ValueError, match="key=value"):
        build_generator("fh:500")


def _coco_json(tmp_path):
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
        "annotations": [
            # small square listed FIRST: painting by area keeps it on top of the big one
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 16.0,
                "segmentation": [[8, 8, 12, 8, 12, 12, 8, 12]],
                "bbox": [8, 8, 4, 4],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 196.0,
                "segmentation": [[2, 2, 16, 2, 16, 16, 2, 16]],
                "bbox": [2, 2, 14, 14],
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ann))
    return path


def test_coco_masks_area_order(tmp_path):
    from detcon.masks.coco import CocoMasks

    masks = CocoMasks(_coco_json(tmp_path))
    labels = masks.labels("some/dir/a.png")
    _assert_contiguous(labels, (20, 20))
    assert labels.max() == 2 and labels[0, 0] == 0  # background
    assert labels[10, 10] != labels[4, 4] != 0  # small object visible inside the big one
    assert masks.params == {"annotations": "instances.json", "order": "area"}
    with pytest.raises(KeyError):
        masks.labels("missing.png")


def test_coco_needs_pycocotools(monkeypatch, tmp_path):
    from detcon.masks import coco

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match="pip install"):
        coco.CocoMasks(_coco_json(tmp_path))
