"""Generators: output dtype, shape and contiguous id range; specs; COCO ground truth."""

import json
import sys

import numpy as np
import pytest

from detcon.masks.generators import (
    CallableGenerator,
    FHGenerator,
    GridGenerator,
    ImportedGenerator,
    QuickshiftGenerator,
    SLICGenerator,
    WatershedGenerator,
    WholeImageGenerator,
    build_generator,
    is_generator_spec,
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
        SLICGenerator(n_segments=8),
        QuickshiftGenerator(kernel_size=3),
        WatershedGenerator(markers=8),
    ],
    ids=["fh", "fh-max-side", "grid4", "grid2x3", "whole", "slic", "quickshift", "watershed"],
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


# --- scikit-image superpixels, user functions by import path ----------------------------------


def _quadrants_found(labels):
    """Each quadrant interior is one id and the four corners are four ids."""
    inner = [
        len(np.unique(labels[r, c]))
        for r in (slice(0, 28), slice(36, 64))
        for c in (slice(0, 28), slice(36, 64))
    ]
    corners = {labels[0, 0], labels[0, 63], labels[63, 0], labels[63, 63]}
    return inner == [1, 1, 1, 1] and len(corners) == 4


@pytest.mark.parametrize(
    "spec",
    ["slic:n_segments=4,compactness=10", "watershed:markers=4,compactness=0.001", "quickshift"],
)
def test_superpixels_find_the_four_quadrants(spec):
    labels = build_generator(spec)(_image())
    _assert_contiguous(labels, (64, 64))
    assert labels.max() + 1 == 4 and _quadrants_found(labels)


def test_superpixels_equal_scikit_image_called_directly():
    from skimage.color import rgb2gray
    from skimage.filters import sobel
    from skimage.segmentation import quickshift, slic, watershed

    img = _image(48, 40, noise=40)
    ours = build_generator("slic:n_segments=12,compactness=5,sigma=0.5")(img)
    ref = slic(img, n_segments=12, compactness=5.0, sigma=0.5, max_num_iter=10, start_label=0)
    assert np.array_equal(ours, relabel_contiguous(ref))
    ours = build_generator("quickshift:kernel_size=3,max_dist=8,ratio=0.7,seed=1")(img)
    ref = quickshift(img, ratio=0.7, kernel_size=3, max_dist=8, rng=1)
    assert np.array_equal(ours, relabel_contiguous(ref))
    ours = build_generator("watershed:markers=9,compactness=0.01")(img)
    ref = watershed(sobel(rgb2gray(img)), markers=9, compactness=0.01)
    assert np.array_equal(ours, relabel_contiguous(ref))


def _photo(name="coffee.png", side=96):
    """A bundled photograph of scikit-image, reduced to ``side`` px wide (fast tests)."""
    from PIL import Image

    from detcon.data.builtin import builtin_images

    path = next(p for p in builtin_images() if p.name == name)
    image = Image.open(path).convert("RGB")
    image = image.resize((side, round(side * image.height / image.width)), Image.BILINEAR)
    return np.asarray(image)


@pytest.mark.parametrize(
    "spec, lo, hi",
    [
        ("slic:n_segments=16", 8, 24),
        ("watershed:markers=16", 12, 20),
        ("quickshift:kernel_size=3,max_dist=20", 4, 200),
        ("fh:scale=300,min_size=50", 2, 60),
    ],
)
def test_generators_on_a_real_photo(spec, lo, hi):
    img = _photo()
    labels = build_generator(spec)(img)
    _assert_contiguous(labels, img.shape[:2])
    assert lo <= labels.max() + 1 <= hi
    assert np.array_equal(labels, build_generator(spec)(img))  # deterministic


def test_superpixel_specs_and_bad_parameters():
    g = build_generator("slic:n_segments=64,compactness=10")
    assert isinstance(g, SLICGenerator)
    assert g.params == {"n_segments": 64, "compactness": 10.0, "sigma": 1.0, "max_num_iter": 10}
    assert build_generator("watershed").params == {"markers": 100, "compactness": 0.001}
    assert build_generator("quickshift:ratio=1").params["ratio"] == 1.0
    for bad, what in [
        ("slic:n_segments=0", "n_segments=0"),
        ("slic:compactness=-1", "compactness=-1"),
        ("quickshift:ratio=2", "ratio=2"),
        ("watershed:markers=2.5", "markers=2.5"),
    ]:
        with pytest.raises(ValueError, match=f"invalid .* params: {what}"):
            build_generator(bad)
    with pytest.raises(ValueError, match="bad parameters"):
        build_generator("slic:segments=3")


REGIONS_MODULE = """
import numpy as np

def halves(image, axis=0, version=1):
    h, w = image.shape[:2]
    n = (h, w)[axis]
    band = (np.arange(n) * 2) // n
    return np.broadcast_to(band[:, None] if axis == 0 else band[None, :], (h, w)) * 10

def floats(image):
    return np.zeros(image.shape[:2])

NOT_CALLABLE = 3
"""


@pytest.fixture
def regions_module(tmp_path, monkeypatch):
    (tmp_path / "user_regions_mod.py").write_text(REGIONS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_regions_mod"
    sys.modules.pop("user_regions_mod", None)


def test_user_function_by_import_path(regions_module):
    import pickle

    from detcon.masks.cache import generator_id

    spec = f"{regions_module}:halves:axis=1"
    assert is_generator_spec(spec) and not is_generator_spec("nope")
    g = build_generator(spec)
    assert isinstance(g, ImportedGenerator)
    assert (g.name, g.params) == (f"{regions_module}:halves", {"axis": 1})
    labels = g(_image(6, 4))
    assert labels.tolist() == [[0, 0, 1, 1]] * 6  # left / right halves, relabelled from 0, 10
    assert build_generator(f"{regions_module}:halves")(_image(4, 6)).tolist() == (
        [[0] * 6] * 2 + [[1] * 6] * 2
    )
    # the cache key holds the function and its parameters; a dict rebuilds it (cache.json)
    other = build_generator(f"{regions_module}:halves:axis=1,version=2")
    assert generator_id(g.name, g.params) != generator_id(other.name, other.params)
    again = build_generator({"name": g.name, **g.params})
    assert (again.name, again.params) == (g.name, g.params)
    back = pickle.loads(pickle.dumps(g))  # DataLoader / pool workers
    assert np.array_equal(back(_image(6, 4)), labels)


def test_user_function_errors(regions_module):
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        build_generator("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no 'missing'"):
        build_generator(f"{regions_module}:missing")
    with pytest.raises(ValueError, match="not callable"):
        build_generator(f"{regions_module}:NOT_CALLABLE")
    with pytest.raises(ValueError, match="integer labels"):
        build_generator(f"{regions_module}:floats")(_image(4, 4))
    with pytest.raises(ValueError, match="unknown mask generator"):
        build_generator("slicc:n_segments=3")


def test_user_function_trains_from_a_cache(regions_module, tmp_path):
    """The cache made with a user function is read back, and its recorded spec rebuilds the
    function for images without an entry."""
    from PIL import Image

    from detcon.data import build_pretrain_dataset
    from detcon.data.datasets import resolve_masks
    from detcon.masks.cache import MaskCache

    data = tmp_path / "imgs"
    data.mkdir()
    for k in range(2):
        Image.fromarray(_image(16, 16, seed=k)).save(data / f"{k}.png")
    gen = build_generator(f"{regions_module}:halves")
    cache = MaskCache(tmp_path / "cache", gen, data_root=data)
    cache.write_info()
    cache.put(data / "0.png", gen(_image(16, 16, seed=0)))
    found, rebuilt = resolve_masks(str(tmp_path / "cache"), data)
    assert (found.name, rebuilt.name, rebuilt.params) == (gen.name, gen.name, {})
    ds = build_pretrain_dataset(data, f"{regions_module}:halves", 32)
    item = ds[1]
    assert item["mask_a"].shape == (32, 32) and int(item["mask_a"].max()) <= 1
