"""Datasets: item contract, cached vs on-the-fly masks, bad-file replacement, class trees,
COCO ground truth, built-in photographs and the pretraining factory."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from detcon.commands.masks import generate_masks
from detcon.data.builtin import BUILTIN_PHOTOS, build_pretrain_dataset, builtin_images
from detcon.data.datasets import (
    CocoDataset,
    ImageClassTreeDataset,
    ImageFolderDataset,
    SyntheticDataset,
    scan_images,
)
from detcon.masks.cache import MaskCache
from detcon.masks.generators import GridGenerator

S = 16


def _check_item(item, label=False):
    assert item["view_a"].shape == item["view_b"].shape == (3, S, S)
    assert item["view_a"].dtype == torch.float32
    assert item["mask_a"].shape == item["mask_b"].shape == (S, S)
    assert item["mask_a"].dtype == item["mask_b"].dtype == torch.int64
    assert isinstance(item["index"], int)
    assert ("label" in item) == label


def _folder(root, names=("a.png", "sub/b.jpg", "c.PNG")):
    for k, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.zeros((20, 24, 3), dtype=np.uint8)
        arr[:, 12:] = 40 * (k + 1)
        Image.fromarray(arr).save(path)
    (root / "notes.txt").write_text("not an image")
    return root


def test_scan_is_recursive_sorted_and_filters_extensions(tmp_path):
    files = scan_images(_folder(tmp_path))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.png", "c.PNG", "sub/b.jpg"]


def test_synthetic_items_are_deterministic_and_blocky():
    ds = SyntheticDataset(n=4, size=32, seed=1, image_size=S)
    _check_item(ds[0])
    img, labels = ds.sample(2)
    img2, labels2 = SyntheticDataset(n=4, size=32, seed=1).sample(2)
    assert np.array_equal(labels, labels2) and np.array_equal(np.asarray(img), np.asarray(img2))
    assert labels.max() >= 1 and np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["view_a"].shape == (4, 3, S, S) and batch["mask_b"].dtype == torch.int64


def test_folder_with_cache_uses_cached_maps(tmp_path):
    root = _folder(tmp_path / "data")
    gen = GridGenerator(2)
    cache = MaskCache(tmp_path / "cache", gen, data_root=root)
    cache.write_info()
    generate_masks(scan_images(root), gen, cache, progress=False)
    ds = ImageFolderDataset(root, masks=str(tmp_path / "cache"), image_size=S)
    ds.generator = None  # prove no on-the-fly computation happens
    for i in range(len(ds)):
        item = ds[i]
        _check_item(item)
        assert set(item["mask_a"].unique().tolist()) <= {0, 1, 2, 3}


def test_cache_miss_falls_back_to_generator_with_warning(tmp_path):
    root = _folder(tmp_path / "data")
    cache = MaskCache(tmp_path / "cache", GridGenerator(2), data_root=root)
    cache.write_info()  # empty cache
    ds = ImageFolderDataset(root, masks=cache, image_size=S)
    with pytest.warns(UserWarning, match="computing it"):
        _check_item(ds[0])


def test_unreadable_file_is_replaced_with_warning(tmp_path):
    root = _folder(tmp_path, names=("a.png", "b.png"))
    (root / "a.png").write_bytes(b"broken")
    ds = ImageFolderDataset(root, masks="grid", image_size=S)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        item = ds[0]
    assert item["index"] == 1  # the next readable file
    (root / "b.png").write_bytes(b"")
    with pytest.raises(RuntimeError, match="unreadable"), pytest.warns(UserWarning):
        ImageFolderDataset(root, masks="grid", image_size=S)[0]


def test_class_tree_adds_labels(tmp_path):
    _folder(tmp_path / "cat", names=("1.png",))
    _folder(tmp_path / "dog", names=("1.png", "2.png"))
    ds = ImageClassTreeDataset(tmp_path, masks="whole", image_size=S)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3
    item = ds[2]
    _check_item(item, label=True)
    assert item["label"] == 1 and (item["mask_a"] == 0).all()


def test_coco_dataset_ground_truth(tmp_path):
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "x.png")
    ann = {
        "images": [{"id": 3, "file_name": "x.png", "height": 20, "width": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 3,
                "category_id": 1,
                "iscrowd": 0,
                "area": 100.0,
                "segmentation": [[0, 0, 10, 0, 10, 20, 0, 20]],
                "bbox": [0, 0, 10, 20],
            }
        ],
        "categories": [{"id": 1, "name": "t"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = CocoDataset(tmp_path, tmp_path / "ann.json", image_size=S)
    labels = ds.load(0)[1]
    assert labels.max() == 1 and labels[5, 2] == 1 and labels[5, 15] == 0
    _check_item(ds[0])


def test_builtin_photographs_are_bundled_rgb():
    files = builtin_images()
    assert len(files) >= 5 and len(files) <= len(BUILTIN_PHOTOS)
    for f in files:
        assert f.is_file()
        with Image.open(f) as im:
            assert im.mode == "RGB" and min(im.size) >= 256


def test_build_pretrain_dataset_factory(tmp_path):
    ds = build_pretrain_dataset("builtin", "grid", image_size=S, repeat=2)
    assert len(ds) == 2 * len(builtin_images())
    _check_item(ds[len(ds) - 1])
    syn = build_pretrain_dataset("synthetic:3", "fh", image_size=S, synthetic_size=24)
    assert len(syn) == 3
    _check_item(syn[0])
    root = _folder(tmp_path / "data")
    _check_item(build_pretrain_dataset(root, "fh:scale=100,min_size=20", image_size=S)[0])
    with pytest.raises(FileNotFoundError, match="builtin"):
        build_pretrain_dataset(tmp_path / "missing", "fh")
    with pytest.raises(ValueError, match="coco_json"):
        build_pretrain_dataset(root, "coco")
    with pytest.raises(FileNotFoundError, match="neither a mask cache folder nor a generator"):
        build_pretrain_dataset(root, str(tmp_path / "no_cache"))
