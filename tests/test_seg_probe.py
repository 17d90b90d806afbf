"""The efficiency benchmark's linear segmentation probe: object IoU by hand, and a run end to
end on a toy VOC folder (random backbone and a checkpoint at output stride 16)."""

import json
import math
import sys
from pathlib import Path

import torch
from test_eval_common import make_checkpoint
from test_eval_segment import make_voc

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import seg_probe  # noqa: E402


def test_object_iou_by_hand():
    # rows = true class (0 = background), columns = predicted class
    cm = torch.tensor([[50, 5, 5], [10, 20, 3], [2, 4, 1]])
    # object pixels predicted as any object: 20 + 3 + 4 + 1 = 28; bg called object: 10;
    # objects called bg: 12  ->  28 / (28 + 10 + 12)
    assert math.isclose(seg_probe.object_iou(cm), 28 / 50)
    assert math.isclose(seg_probe.object_iou(torch.diag(torch.tensor([3, 4, 5]))), 1.0)
    assert math.isnan(seg_probe.object_iou(torch.tensor([[7, 0], [0, 0]])))  # no object pixels


def test_probe_runs_end_to_end(tmp_path):
    voc = make_voc(tmp_path / "voc", n_train=4, n_val=2, size=64)
    out = tmp_path / "random.json"
    common = ["--data", voc, "--num-classes", 3, "--epochs", 2, "--batch-size", 2]
    seg_probe.main(list(map(str, ["--random", "--arch", "resnet18", "--out", out, *common])))
    m = json.loads(out.read_text())["metrics"]
    assert m["feature_shape"] == [512, 2, 2] and 0 <= m["miou"] <= 1
    cm = torch.tensor(m["confusion"])
    assert cm.shape == (3, 3) and math.isclose(m["object_iou"], seg_probe.object_iou(cm))
    assert math.isclose(m["pixel_accuracy"], (cm.diag().sum() / cm.sum()).item())

    ckpt = make_checkpoint(tmp_path / "ck.pt")
    out16 = tmp_path / "ck.json"
    args = ["--checkpoint", ckpt, "--out", out16, "--output-stride", 16, *common]
    seg_probe.main(list(map(str, args)))
    assert json.loads(out16.read_text())["metrics"]["feature_shape"][1:] == [4, 4]
