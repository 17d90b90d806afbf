"""Segmentation: VOC layout with palette PNGs, linear probe and FCN fine-tuning end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_common import make_checkpoint

from detcon.cli import main
from detcon.evaluation.segmentation import SegmentationModel, dilate_backbone_
from detcon.evaluation.voc import TrainTransform, VOCSegmentation
from detcon.model.backbone import build_backbone

COLORS = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]  # VOC palette entries 0, 1, 2


def make_voc(root, n_train=4, n_val=2, size=48, seed=0):
    """Images with a red square (class 1) and a green square (class 2) on black, with a
    255 border around each square, saved as JPEG + palette PNG."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = [c for rgb in COLORS for c in rgb] + [224, 224, 192] * 253
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        for i in range(n):
            image_id = f"{split}_{i}"
            ids.append(image_id)
            img = np.zeros((size, size, 3), np.uint8)
            mask = np.zeros((size, size), np.uint8)
            for cls in (1, 2):
                y, x = rng.integers(0, size - 16, 2)
                mask[y : y + 16, x : x + 16] = 255
                mask[y + 1 : y + 15, x + 1 : x + 15] = cls
                img[y : y + 16, x : x + 16] = COLORS[cls]
            Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            m = Image.fromarray(mask, mode="P")
            m.putpalette(palette)
            m.save(root / "SegmentationClass" / f"{image_id}.png")
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc_reading_and_paired_transform(tmp_path):
    root = make_voc(tmp_path / "voc")
    ds = VOCSegmentation(root, "train")
    img, mask = ds[0]
    assert img.shape == (3, 48, 48) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 1, 2, 255}
    # the transform keeps image and mask aligned: red pixels stay labelled 1
    t_img, t_mask = TrainTransform(40, scale_range=(1.0, 1.0), seed=1)(img, mask)
    red = (t_img[0] > 0.0) & (t_img[1] < -1.0)  # normalised red channel high, green low
    assert t_img.shape == (3, 40, 40) and t_mask.shape == (40, 40)
    assert (t_mask[red] == 1).float().mean() > 0.9
    # a colour-rendered mask is refused with a clear error
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(
        root / "SegmentationClass" / "train_0.png"
    )
    with pytest.raises(ValueError, match="palette"):
        ds[0]


def test_dilated_fcn_output_stride_8_same_weights():
    net = build_backbone("resnet18")
    keys = {k: v.shape for k, v in net.state_dict().items()}
    dilate_backbone_(net)
    assert {k: v.shape for k, v in net.state_dict().items()} == keys
    assert net(torch.zeros(1, 3, 64, 64)).shape[-2:] == (8, 8)
    model = SegmentationModel(build_backbone("resnet18"), 5, "finetune").eval()
    assert model(torch.zeros(1, 3, 40, 56)).shape == (1, 5, 40, 56)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_segment_cli(tmp_path, mode):
    root = make_voc(tmp_path / "voc")
    ck = make_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / f"{mode}.json"
    argv = [
        "eval",
        "segment",
        "--checkpoint",
        str(ck),
        "--data",
        str(root),
        "--mode",
        mode,
        "--num-classes",
        "3",
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
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == f"segment-{mode}"
    assert 0.0 <= res["metrics"]["miou"] <= 1.0
    assert len(res["metrics"]["per_class_iou"]) == 3
    assert res["config"]["num_train"] == 4 and res["config"]["num_val"] == 2
    # the confusion matrix counts every labelled val pixel once, and the reported IoU and
    # pixel accuracy follow from it by their definitions
    m = res["metrics"]
    cm = np.array(m["confusion_matrix"])
    labelled = sum(int((mask != 255).sum()) for _, mask in VOCSegmentation(root, "val"))
    assert cm.shape == (3, 3) and cm.sum() == labelled
    for c in range(3):
        union = cm[c, :].sum() + cm[:, c].sum() - cm[c, c]
        if union == 0:
            assert m["per_class_iou"][c] is None
        else:
            assert m["per_class_iou"][c] == pytest.approx(cm[c, c] / union, abs=1e-6)
    assert m["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    # ... and both figures are written next to the JSON
    for suffix in ("per_class_iou", "confusion"):
        with Image.open(tmp_path / f"{mode}.{suffix}.png") as png:
            assert png.format == "PNG" and png.width > 100 and png.height > 100


def test_per_class_iou_figure_draws_the_values():
    from detcon.evaluation.figures import per_class_iou_figure

    fig = per_class_iou_figure([0.5, None, 0.25], ["bg", "cat", "dog"], miou=0.375)
    ax = fig.axes[0]
    assert [b.get_height() for b in ax.patches] == [0.5, 0.0, 0.25]  # absent class: empty bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bg", "cat", "dog"]
    assert "n/a" in [t.get_text() for t in ax.texts]
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [0.375, 0.375]
    with pytest.raises(ValueError, match="2 IoU values for 3"):
        per_class_iou_figure([0.5, 0.5], ["a", "b", "c"], 0.5)


def test_confusion_figure_is_row_normalised(tmp_path):
    from detcon.evaluation.figures import confusion_figure, save_figure

    cm = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]  # class 1 has no ground-truth pixels
    fig = confusion_figure(cm, ["a", "b", "c"])
    drawn = np.asarray(fig.axes[0].images[0].get_array())
    expected = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]  # by hand
    assert np.allclose(drawn, expected)
    assert [t.get_text() for t in fig.axes[0].texts] == [
        "75",
        "25",
        "0",
        "0",
        "0",
        "0",
        "25",
        "25",
        "50",
    ]
    path = save_figure(fig, tmp_path / "cm.png")
    with Image.open(path) as png:
        assert png.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temporary file left


def test_linear_probe_head_is_invariant_to_feature_scale():
    import torch
    from torch import nn

    from detcon.evaluation.segmentation import SegmentationModel

    class Fixed(nn.Module):
        out_channels = 4

        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return (
                x[:, :1].repeat(1, 4, 1, 1)[:, :, ::4, ::4] * self.scale
                + torch.arange(4.0)[None, :, None, None]
            )

    torch.manual_seed(0)
    x = torch.randn(3, 3, 16, 16)
    small, big = (
        SegmentationModel(Fixed(1.0), 5, "linear"),
        SegmentationModel(Fixed(1e3), 5, "linear"),
    )
    big.head[1].load_state_dict(small.head[1].state_dict())
    small.train(), big.train()
    # standardised per channel with batch statistics: the scale of the features does not matter
    assert torch.allclose(small(x), big(x), atol=1e-3)
