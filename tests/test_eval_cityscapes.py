"""Cityscapes: standard layout read directly, label id -> train id mapping checked pixel by
pixel, layout auto-detection, and ``detcon eval segment`` end to end on a fake tree."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_common import make_checkpoint

from detcon.cli import main
from detcon.evaluation.cityscapes import (
    CLASS_NAMES,
    CityscapesSegmentation,
    detect_layout,
    label_ids_to_train_ids,
)

H, W = 32, 64
# label ids used in the fake masks; 0 (unlabeled), 1 (ego vehicle), 4 (static), 9 (parking),
# 14 (guard rail), 30 (trailer) and 34 (not a Cityscapes id) are unmapped and must become 255
USED_IDS = [7, 8, 11, 23, 24, 26, 33, 0, 1, 4, 9, 14, 30, 34]


def label_image(rng) -> np.ndarray:
    """uint8[H, W] of label ids: vertical stripes of 4 px cycling through a shuffled USED_IDS,
    with fixed anchors: (0, 0) = 7 road, (0, 8) = 26 car, (31, 63) = 0 unlabeled,
    (16, 40) = 33 bicycle, (16, 48) = 4 static."""
    ids = rng.permutation(USED_IDS)
    mask = np.repeat(ids[np.arange(W) // 4 % len(ids)][None], H, axis=0).astype(np.uint8)
    mask[0, 0], mask[0, 8], mask[31, 63], mask[16, 40], mask[16, 48] = 7, 26, 0, 33, 4
    return mask


def make_cityscapes(root, seed=0):
    """leftImg8bit + gtFine for train (2 cities x 2 images) and val (2 cities x 1 image).
    Image colour follows the label so the probe has something to learn."""
    rng = np.random.default_rng(seed)
    layout = {"train": {"aachen": 2, "bochum": 2}, "val": {"frankfurt": 1, "lindau": 1}}
    for split, cities in layout.items():
        for city, n in cities.items():
            (root / "leftImg8bit" / split / city).mkdir(parents=True)
            (root / "gtFine" / split / city).mkdir(parents=True)
            for i in range(n):
                name = f"{city}_{i:06d}_000019"
                ids = label_image(rng)
                c = ids.astype(np.int64)
                img = np.stack([c * 7 % 256, c * 31 % 256, c * 3 % 256], -1).astype(np.uint8)
                Image.fromarray(img).save(
                    root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
                )
                Image.fromarray(ids, mode="L").save(
                    root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"
                )
    return root


def test_label_id_mapping_by_hand():
    ids = np.array(
        [[7, 8, 11, 12, 13, 17, 19, 20, 21, 22], [23, 24, 25, 26, 27, 28, 31, 32, 33, 0]]
    )
    expected = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 255]]
    assert label_ids_to_train_ids(ids).tolist() == expected
    # every id outside the 19 listed is ignored, including the unused / "void" ones
    unmapped = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 200, 255]
    assert (label_ids_to_train_ids(np.array(unmapped)) == 255).all()
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[13] == "car" and CLASS_NAMES[18] == "bicycle"
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        label_ids_to_train_ids(np.array([-1, 7]))


def test_dataset_reads_layout_and_maps_pixels(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    ds = CityscapesSegmentation(root, "train")
    assert len(ds) == 4 and len(CityscapesSegmentation(root, "val")) == 2
    assert [p.parent.name for p, _, _ in ds.samples] == ["aachen"] * 2 + ["bochum"] * 2
    img, mask = ds[0]
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert mask.shape == (H, W) and mask.dtype == torch.int64
    assert mask[0, 0] == 0 and mask[0, 8] == 13  # road, car
    assert mask[31, 63] == 255 and mask[16, 48] == 255  # unlabeled, static
    assert mask[16, 40] == 18  # bicycle
    raw = np.array(Image.open(ds.samples[0][1]), dtype=np.int64)
    ref = np.full_like(raw, 255)  # slow reference from the definition, pixel by pixel
    table = {7: 0, 8: 1, 11: 2, 23: 10, 24: 11, 26: 13, 33: 18}
    for (y, x), v in np.ndenumerate(raw):
        ref[y, x] = table.get(int(v), 255)
    assert np.array_equal(mask.numpy(), ref)
    assert set(mask.unique().tolist()) == {0, 1, 2, 10, 11, 13, 18, 255}


def test_train_ids_file_preferred_and_checked(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    ds = CityscapesSegmentation(root, "val")
    label_path = ds.samples[0][1]
    train_path = label_path.with_name(label_path.name.replace("labelIds", "labelTrainIds"))
    tid = np.full((H, W), 255, np.uint8)
    tid[:, :10] = 5  # differs from the labelIds content, so we can tell which file was read
    Image.fromarray(tid, mode="L").save(train_path)
    ds = CityscapesSegmentation(root, "val")
    assert ds.samples[0][1] == train_path and ds.samples[1][1].name.endswith("_labelIds.png")
    _, mask = ds[0]
    assert (mask[:, :10] == 5).all() and (mask[:, 10:] == 255).all()
    tid[0, 0] = 19  # not a train id
    Image.fromarray(tid, mode="L").save(train_path)
    with pytest.raises(ValueError, match="outside 0..18"):
        ds[0]


def test_layout_errors_and_detection(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    assert detect_layout(root) == "cityscapes"
    (tmp_path / "voc" / "JPEGImages").mkdir(parents=True)
    assert detect_layout(tmp_path / "voc") == "voc"
    with pytest.raises(FileNotFoundError, match="leftImg8bit.*JPEGImages"):
        detect_layout(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/test.*splits present.*'train'"):
        CityscapesSegmentation(root, "test")
    (root / "leftImg8bit" / "test").mkdir()
    with pytest.raises(FileNotFoundError, match="gtFine/test"):
        CityscapesSegmentation(root, "test")
    (root / "gtFine" / "test").mkdir()
    with pytest.raises(ValueError, match="no images matching"):
        CityscapesSegmentation(root, "test")
    missing = next((root / "gtFine" / "val" / "lindau").iterdir())
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="no label for .*expected .*labelIds.png"):
        CityscapesSegmentation(root, "val")
    # the colour rendering is refused
    ds = CityscapesSegmentation(root, "train")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(ds.samples[0][1])
    with pytest.raises(ValueError, match="colour-rendered mask"):
        ds[0]


def _argv(ck, root, out, *extra):
    return [
        "eval",
        "segment",
        "--checkpoint",
        str(ck),
        "--data",
        str(root),
        "--mode",
        "linear",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def test_segment_cli_cityscapes_auto_detected(tmp_path, capsys):
    root = make_cityscapes(tmp_path / "cs")
    ck = make_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "cs.json"
    assert main(_argv(ck, root, out)) == 0  # no --dataset, no --num-classes
    res = json.loads(out.read_text())
    assert res["protocol"] == "segment-linear"
    assert res["config"]["dataset"] == "cityscapes"
    assert res["config"]["num_train"] == 4 and res["config"]["num_val"] == 2
    m = res["metrics"]
    assert 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["pixel_accuracy"] <= 1.0
    assert m["class_names"] == list(CLASS_NAMES) and len(m["per_class_iou"]) == 19
    # wall (id 12) is never drawn: no IoU (None) unless predicted, then 0; road always has one
    assert m["per_class_iou"][3] in (None, 0.0)
    assert m["per_class_iou"][0] is not None
    assert np.array(m["confusion_matrix"]).shape == (19, 19)
    assert (tmp_path / "cs.per_class_iou.png").is_file() and (
        tmp_path / "cs.confusion.png"
    ).is_file()
    bad = _argv(ck, root, tmp_path / "bad.json", "--dataset", "cityscapes", "--num-classes", "3")
    assert main(bad) == 2  # a one-line error from the CLI
    assert "19 train ids" in capsys.readouterr().err
