"""Tests for benchmarks/scenes.py on hand-made stamps and backgrounds (no package download)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "scenes.py"
_spec = importlib.util.spec_from_file_location("scenes", _PATH)
scenes = importlib.util.module_from_spec(_spec)
sys.modules["scenes"] = scenes
_spec.loader.exec_module(scenes)


def _textured_stamp(rng, h=40, w=50, class_id=1, name="a.png"):
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    rgba[..., 3] = np.where(
        ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1, 255, 0
    )
    return scenes.Stamp(name, class_id, rgba)


def test_photographic_filter_separates_flat_from_textured():
    rng = np.random.default_rng(0)
    flat = np.zeros((40, 40, 4), np.uint8)
    flat[..., 0], flat[..., 3] = 200, 255
    flat[20:, :, 1] = 100  # two flat colours: clip art
    assert not scenes.is_photographic(flat)
    assert scenes.is_photographic(_textured_stamp(rng).rgba)
    tiny = _textured_stamp(rng, 10, 10).rgba
    assert not scenes.is_photographic(tiny)


def test_stamp_class_rules():
    assert scenes.stamp_class("animals/birds/owl.png") == 1
    assert scenes.stamp_class("military/vehicles/tank.png") == scenes.CLASSES.index("vehicles") + 1
    assert scenes.stamp_class("animals/cartoon/dino.png") is None
    assert scenes.stamp_class("animals/owl_mirror.png") is None
    assert scenes.stamp_class("symbols/math/1.png") is None


def test_voc_palette_known_colours():
    pal = scenes.voc_palette()
    assert len(pal) == 768
    assert pal[0:3] == [0, 0, 0] and pal[3:6] == [128, 0, 0] and pal[6:9] == [0, 128, 0]
    assert pal[255 * 3 : 256 * 3] == [224, 224, 192]  # VOC's ignore colour


def test_split_holds_out_stamps_per_class():
    rng = np.random.default_rng(0)
    stamps = [
        _textured_stamp(rng, class_id=c, name=f"{c}_{i}")
        for c in range(1, len(scenes.CLASSES) + 1)
        for i in range(4)
    ]
    train, val = scenes.split_stamps(stamps, seed=3)
    assert not {s.name for s in train} & {s.name for s in val}
    assert len(train) + len(val) == len(stamps)
    for c in range(1, len(scenes.CLASSES) + 1):
        assert any(s.class_id == c for s in val) and any(s.class_id == c for s in train)
    again = scenes.split_stamps(stamps, seed=3)
    assert [s.name for s in again[1]] == [s.name for s in val]


def test_compose_scene_masks_match_pixels_and_are_deterministic():
    rng = np.random.default_rng(1)
    stamps = [_textured_stamp(rng, class_id=c, name=str(c)) for c in (1, 2, 3)]
    bg = ("grey", np.full((120, 160, 3), 77, np.uint8))
    image, inst, classes, edge = scenes.compose_scene(np.random.default_rng(5), [bg], stamps, 48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert inst.dtype == np.int32 and inst.shape == (48, 48)
    n = len(classes)
    assert 2 <= n <= 5 and sorted(np.unique(inst)) == list(range(n + 1))  # contiguous ids
    assert set(classes) <= {1, 2, 3}
    # Background pixels keep the background colour, except right next to an object (faint alpha).
    changed = np.abs(image.astype(int) - 77).max(-1) > 1
    pad = np.pad(inst > 0, 1)
    near = np.any([pad[dy : dy + 48, dx : dx + 48] for dy in range(3) for dx in range(3)], axis=0)
    assert not np.any(changed & (inst == 0) & ~near)
    assert edge.any() and np.all(inst[edge] > 0)  # soft-edge band: object side of resized edges
    # Same seed, same scene; another seed, another scene.
    again = scenes.compose_scene(np.random.default_rng(5), [bg], stamps, 48)
    assert np.array_equal(again[0], image) and np.array_equal(again[1], inst)
    other = scenes.compose_scene(np.random.default_rng(6), [bg], stamps, 48)
    assert not np.array_equal(other[1], inst)


def test_coco_annotations_round_trip():
    from pycocotools import mask as mask_utils

    inst = np.zeros((10, 12), np.int32)
    inst[2:5, 3:9] = 1  # 3 x 6 box at x=3, y=2
    inst[6:10, 0:2] = 2
    anns = scenes.coco_annotations(7, inst, [4, 2], first_ann=11)
    assert [a["id"] for a in anns] == [11, 12] and [a["category_id"] for a in anns] == [4, 2]
    assert anns[0]["bbox"] == [3.0, 2.0, 6.0, 3.0] and anns[0]["area"] == 18.0
    rle = dict(anns[1]["segmentation"], counts=anns[1]["segmentation"]["counts"].encode())
    assert np.array_equal(mask_utils.decode(rle), (inst == 2).astype(np.uint8))


def test_generate_writes_voc_coco_and_unlabelled(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    stamps = [
        _textured_stamp(rng, class_id=c, name=f"{c}_{i}")
        for c in range(1, len(scenes.CLASSES) + 1)
        for i in range(2)
    ]
    monkeypatch.setattr(scenes, "fetch_packages", lambda cache: tmp_path)
    monkeypatch.setattr(scenes, "load_stamps", lambda root: stamps)
    monkeypatch.setattr(
        scenes,
        "load_backgrounds",
        lambda root: [("noise", rng.integers(0, 256, (80, 80, 3), np.uint8))],
    )
    meta = scenes.generate(tmp_path / "out", 3, 2, 32, seed=0, ignore_boundary=True)
    out = tmp_path / "out"
    assert not set(meta["stamps"]["train"]) & set(meta["stamps"]["val"])
    ids = (out / "voc/ImageSets/Segmentation/val.txt").read_text().split()
    assert ids == ["val_000000", "val_000001"]
    lab = np.asarray(Image.open(out / "voc/SegmentationClass/val_000000.png"))
    obj = np.asarray(Image.open(out / "voc/SegmentationObject/val_000000.png"))
    assert lab.shape == (32, 32) and set(np.unique(lab)) <= set(range(len(scenes.CLASSES) + 1)) | {
        255
    }
    assert np.all(lab[obj == 0] == 0) and np.all(lab[obj > 0] > 0) and (lab == 255).any()
    coco = json.loads((out / "coco/annotations/instances_train.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["categories"]) == len(scenes.CLASSES)
    gt = np.load(out / "unlabelled/gt_masks/train_000002.npy")
    assert gt.dtype == np.int32 and gt.max() == sum(a["image_id"] == 3 for a in coco["annotations"])
    assert sorted(p.name for p in (out / "unlabelled/images").iterdir()) == [
        f"train_00000{i}.jpg" for i in range(3)
    ]


def test_generate_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError):
        scenes.generate(tmp_path, 0, 1, 32, seed=0)


def test_split_backgrounds_holds_out_photos():
    train, val = scenes.split_backgrounds(38, seed=0)
    assert len(val) == round(0.25 * 38) and not set(train) & set(val)
    assert sorted(train + val) == list(range(38))
    assert scenes.split_backgrounds(38, seed=0) == (train, val)
    assert scenes.split_backgrounds(38, seed=1) != (train, val)
    assert scenes.split_backgrounds(2, seed=0)[1] != []  # at least one of each
    with pytest.raises(ValueError):
        scenes.split_backgrounds(1, seed=0)


def test_compose_scene_reports_the_stamp_of_every_visible_instance():
    rng = np.random.default_rng(1)
    stamps = [_textured_stamp(rng, class_id=c, name=f"s{c}") for c in (1, 2, 3)]
    bg = ("grey", np.full((120, 160, 3), 77, np.uint8))
    names: list[str] = []
    _, inst, classes, _ = scenes.compose_scene(
        np.random.default_rng(5), [bg], stamps, 48, 3, 6, names_out=names
    )
    assert len(names) == len(classes) == inst.max() and 3 <= len(names) <= 6
    assert [int(n[1:]) for n in names] == classes  # stamp s<c> has class c
