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
    stamps = [_textured_stamp(rng, class_id=c, name=f"{c}_{i}") for c in range(1, len(scenes.CLASSES) + 1)
              for i in range(4)]  # fmt: skip
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
    stamps = [_textured_stamp(rng, class_id=c, name=f"{c}_{i}") for c in range(1, len(scenes.CLASSES) + 1)
              for i in range(2)]  # fmt: skip
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


def _efficiency():
    path = _PATH.with_name("efficiency.py")
    spec = importlib.util.spec_from_file_location("efficiency", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["efficiency"] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def test_efficiency_steps_to_reach_hand_cases():
    eff = _efficiency()
    steps = [10, 20, 40, 80]
    # Crossing between 20 (0.30) and 40 (0.50) at a third of the way in log2 steps: 20 * 2**(1/3).
    reach, kind = eff.steps_to_reach(steps, [0.1, 0.3, 0.5, 0.6], 0.3 + 0.2 / 3)
    assert kind == "interpolated" and reach == pytest.approx(20 * 2 ** (1 / 3))
    assert eff.steps_to_reach(steps, [0.5, 0.6, 0.7, 0.8], 0.4) == (10.0, "at most")
    assert eff.steps_to_reach(steps, [0.1, 0.2, 0.3, 0.35], 0.4) == (None, "not reached")
    # Exactly on a budget counts as reached there.
    assert eff.steps_to_reach(steps, [0.1, 0.4, 0.5, 0.6], 0.4) == (
        pytest.approx(20.0),
        "interpolated",
    )


def test_efficiency_summary_speedup_and_loop_seconds(tmp_path):
    eff = _efficiency()
    s = eff.SETTINGS["smoke"]  # 8 steps: budgets 1, 2, 4, 8
    recs = [
        {"run": "BYOL", "seed": 0, "step": b, "seconds": b, "miou": 0.2 + 0.01 * b}
        for b in (1, 2, 4, 8)
    ]
    recs += [
        {"run": "DetCon_B", "seed": 0, "step": b, "seconds": b, "miou": 0.2 + 0.02 * b}
        for b in (1, 2, 4, 8)
    ]
    cmp = eff.summarise(recs, [0.1], s)["detcon_b_vs_byol"]
    # BYOL final 0.28; DetCon_B: 0.24 at 2, 0.28 at 4 -> reached exactly at 4 steps: 2x fewer.
    assert cmp["detcon_b_steps"] == pytest.approx(4.0) and cmp["speedup"] == pytest.approx(2.0)
    assert eff.summarise(recs, [0.5], s)["detcon_b_vs_byol"]["speedup"] is None  # below floor
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {batch_size: 10}\n")
    lines = [{"step": 5, "images_per_s": 25.0}, {"step": 10, "images_per_s": 50.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert eff.loop_seconds(run) == {5: 2.0, 10: 3.0}  # 50 images / 25 per s, then + 50 / 50


def test_efficiency_report_tables_and_plots(tmp_path):
    eff = _efficiency()
    s = eff.SETTINGS["smoke"]  # budgets 1, 2, 4, 8
    recs = [
        {"run": run, "seed": seed, "step": b, "seconds": b, "miou": m + 0.01 * b + 0.002 * seed,
         "object_iou": 2 * m + 0.01 * b}
        for run, m in (("BYOL", 0.2), ("DetCon_B", 0.1))
        for seed in (0, 1)
        for b in (1, 2, 4, 8)
    ]  # fmt: skip
    text = eff.write_report(tmp_path, recs, [0.05, 0.07], s, "smoke", [0.1, 0.2])
    miou_part, object_part = text.split("Class-agnostic object IoU")
    rows = {ln.split(" | ")[0]: ln for ln in miou_part.splitlines() if ln.startswith("| ")}
    assert "28.1 ± 0.1 (2)" in rows["| BYOL"]  # 0.2 + 0.08 + mean(0, 0.002); std 0.0014
    rows = {ln.split(" | ")[0]: ln for ln in object_part.splitlines() if ln.startswith("| ")}
    assert rows["| BYOL"].endswith("| 48.0 ± 0.0 (2) | 8 |")  # 0.4 + 0.08 at 8 steps
    assert "| random init | – | 6.0 (floor, n=2) |" in text and "15.0 (floor, n=2)" in text
    assert "DetCon_B did not reach BYOL's final mIoU (28.1)" in text
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["summary"]["rows"]["DetCon_B"]["8"]["object_iou_mean"] == pytest.approx(0.28)
    for name in ("table.md", "miou_vs_steps.png", "miou_vs_seconds.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_efficiency_setting_overrides():
    eff = _efficiency()
    s, done = eff.apply_overrides(eff.SETTINGS["cpu"], ["base_lr=32", "steps=96"])
    assert s.base_lr == 32.0 and s.steps == 96 and done == [("base_lr", "32"), ("steps", "96")]
    assert s.output_stride == 16  # untouched fields kept
    for bad in ("lr=3", "base_lr", "steps=1.5", "seeds=1"):
        with pytest.raises(ValueError, match="--set"):
            eff.apply_overrides(s, [bad])
