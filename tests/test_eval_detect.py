"""Detection: COCO JSON (polygon + RLE masks), AP plumbing, Mask R-CNN end to end on CPU."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_common import make_checkpoint

from detcon.cli import main
from detcon.evaluation.coco import CocoInstances
from detcon.evaluation.detection import coco_evaluate, lr_factor, predictions_to_coco


def make_coco(root, n=2, size=48, seed=0):
    """Images with one red square (category 3, polygon) and one blue square (category 7,
    uncompressed RLE) each."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        for cat, color in ((3, (220, 0, 0)), (7, (0, 0, 220))):
            y, x = (int(v) for v in rng.integers(0, size - 16, 2))
            img[y : y + 16, x : x + 16] = color
            ann = {
                "id": len(anns) + 1,
                "image_id": i + 1,
                "category_id": cat,
                "iscrowd": 0,
                "bbox": [x, y, 16, 16],
                "area": 256,
            }
            if cat == 3:
                ann["segmentation"] = [[x, y, x + 16, y, x + 16, y + 16, x, y + 16]]
            else:
                m = np.zeros((size, size), np.uint8)
                m[y : y + 16, x : x + 16] = 1
                rle = mask_utils.encode(np.asfortranarray(m))
                ann["segmentation"] = {
                    "size": [size, size],
                    "counts": rle["counts"].decode("ascii"),
                }
            anns.append(ann)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
    cats = [{"id": 3, "name": "red"}, {"id": 7, "name": "blue"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_dataset_targets(tmp_path):
    ds = CocoInstances(tmp_path / "images", make_coco(tmp_path), train=False)
    img, t = ds[0]
    assert img.shape == (3, 48, 48) and ds.num_classes == 2 and ds.cat_ids == [3, 7]
    assert t["labels"].tolist() == [1, 2] and t["masks"].shape == (2, 48, 48)
    # polygon and RLE masks both decode to the annotated box region
    for box, mask in zip(t["boxes"], t["masks"], strict=True):
        x0, y0, x1, y1 = box.int().tolist()
        assert mask[y0:y1, x0:x1].float().mean() > 0.85 and mask.sum() <= 17 * 17


def test_perfect_predictions_give_ap_one(tmp_path):
    ds = CocoInstances(tmp_path / "images", make_coco(tmp_path), train=False)
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        outputs.append(
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.ones(len(t["labels"])),
                "masks": t["masks"][:, None].float(),
            }
        )
        ids.append(t["image_id"])
    metrics = coco_evaluate(ds.coco, predictions_to_coco(outputs, ids, ds.cat_ids))
    assert metrics["box_AP"] == pytest.approx(1.0) and metrics["mask_AP"] == pytest.approx(1.0)
    # swapping the classes makes every detection wrong
    for o in outputs:
        o["labels"] = 3 - o["labels"]
    metrics = coco_evaluate(ds.coco, predictions_to_coco(outputs, ids, ds.cat_ids))
    assert metrics["box_AP"] == 0.0 and metrics["mask_AP"] == 0.0


def test_1x_schedule():
    assert lr_factor(0, 90_000, 1000) == pytest.approx(0.001)
    assert lr_factor(1000, 90_000, 1000) == 1.0
    assert lr_factor(59_999, 90_000, 1000) == 1.0
    assert lr_factor(60_000, 90_000, 1000) == pytest.approx(0.1)
    assert lr_factor(80_000, 90_000, 1000) == pytest.approx(0.01)


@pytest.mark.slow
def test_detect_cli_tiny(tmp_path):
    ann = make_coco(tmp_path)
    ck = make_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "det.json"
    argv = [
        "eval",
        "detect",
        "--checkpoint",
        str(ck),
        "--data",
        str(tmp_path),
        "--images",
        str(tmp_path / "images"),
        "--train-json",
        str(ann),
        "--val-json",
        str(ann),
        "--image-size",
        "48",
        "--batch-size",
        "2",
        "--max-iters",
        "2",
        "--warmup-iters",
        "1",
        "--frozen-bn",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "detect-maskrcnn-fpn" and res["config"]["max_iters"] == 2
    assert 0.0 <= res["metrics"]["box_AP"] <= 1.0 and 0.0 <= res["metrics"]["mask_AP"] <= 1.0
    assert np.isfinite(res["metrics"]["final_train_loss"])
