"""Linear segmentation probe on cached, standardised frozen features (efficiency benchmark).

Why not ``detcon eval segment --mode linear`` as is: its 1x1 head sees the raw ``layer4``
features, whose scale differs by orders of magnitude between a random backbone and pretrained
ones (the probe loss of a BYOL checkpoint was ~50 at lr 0.1 and diverging), so one learning
rate cannot serve all methods fairly, and it re-runs the frozen backbone on augmented crops at
every step (minutes per checkpoint on 2 CPU cores). Here, with the library's own backbone
loading, VOC reader and mIoU code:

1. the frozen backbone (eval mode) maps every probe-train and val image, at full resolution
   and without augmentation, to ``layer4`` features ``[N, C, h, w]`` (computed once);
2. features are standardised per channel with the train mean / std (a BatchNorm without
   affine parameters, as in common linear-probe protocols), so the head's learning rate
   means the same thing for every backbone;
3. a 1x1 conv (C -> classes) is trained with SGD (momentum 0.9, poly decay) on the bilinearly
   upsampled logits, cross-entropy with ignore 255 against the labels subsampled by 2 (cheaper;
   the logits are smooth at that scale); val mIoU at full resolution from the confusion matrix.

    python benchmarks/seg_probe.py --checkpoint CKPT --data VOC_ROOT --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


@torch.no_grad()
def extract(backbone, dataset, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, C, h, w]`` and masks ``[N, H, W]`` of a VOC split (full resolution)."""
    from torch.utils.data import DataLoader

    feats, masks = [], []
    for img, mask in DataLoader(dataset, batch_size=batch):
        feats.append(backbone(img))
        masks.append(mask)
    return torch.cat(feats), torch.cat(masks)


def train_head(x, y, num_classes: int, *, epochs: int, batch: int, lr: float, wd: float, seed: int):
    """SGD on a 1x1 conv over standardised features ``x [N, C, h, w]``; labels ``y [N, H, W]``."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Conv2d(x.shape[1], num_classes, kernel_size=1).to(x.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    steps_per_epoch = max(1, len(x) // batch)
    total, step, loss = epochs * steps_per_epoch, 0, torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch].to(x.device)
            for group in opt.param_groups:
                group["lr"] = lr * (1 - step / total) ** 0.9
            target = y[idx][:, ::2, ::2]  # [b, H/2, W/2]: half-resolution loss, 4x cheaper
            size = target.shape[-2:]
            logits = F.interpolate(head(x[idx]), size=size, mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target, ignore_index=255)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite probe loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head, float(loss.detach())


def object_iou(cm: torch.Tensor) -> float:
    """Class-agnostic object IoU from a confusion matrix ``cm[true, pred]`` whose class 0 is the
    background: every other class counts as "object" in both maps, so finding the objects is
    scored apart from naming their class. NaN when there are no object pixels at all."""
    tp, fp, fn = cm[1:, 1:].sum(), cm[0, 1:].sum(), cm[1:, 0].sum()
    union = tp + fp + fn
    return float("nan") if union == 0 else tp.item() / union.item()


def run(args) -> dict:
    from detcon.evaluation.common import load_backbone
    from detcon.evaluation.metrics import confusion_matrix, iou_from_confusion
    from detcon.evaluation.voc import VOCSegmentation
    from detcon.model.backbone import set_output_stride_

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    weights = None if args.checkpoint else "random"
    backbone, source = load_backbone(args.checkpoint, weights, args.arch, "online", args.seed)
    set_output_stride_(backbone, args.output_stride)  # 32: unchanged
    backbone.eval()
    x_tr, y_tr = extract(backbone, VOCSegmentation(args.data, args.train_split))
    x_va, y_va = extract(backbone, VOCSegmentation(args.data, args.val_split))
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-6)
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    t_feat = time.perf_counter() - t0
    head, last = train_head(
        x_tr,
        y_tr,
        args.num_classes,
        epochs=args.epochs,
        batch=args.batch_size,
        lr=args.lr,
        wd=args.weight_decay,
        seed=args.seed,
    )
    with torch.no_grad():
        cm = torch.zeros(args.num_classes, args.num_classes, dtype=torch.long)
        for i in range(0, len(x_va), 64):
            logits = F.interpolate(
                head(x_va[i : i + 64]), size=y_va.shape[-2:], mode="bilinear", align_corners=False
            )
            cm += confusion_matrix(logits.argmax(1), y_va[i : i + 64], args.num_classes)
    iou, miou = iou_from_confusion(cm)
    return {
        "protocol": "segment-linear-standardised",
        "backbone": source,
        "config": {k: v for k, v in vars(args).items() if k not in ("checkpoint", "out")},
        "metrics": {
            "miou": miou,
            "pixel_accuracy": (cm.diag().sum() / cm.sum().clamp(min=1)).item(),
            "object_iou": object_iou(cm),
            "confusion": cm.tolist(),  # [true class, predicted class] pixel counts
            "per_class_iou": [None if v != v else float(v) for v in iou.tolist()],
            "final_train_loss": last,
            "feature_shape": list(x_tr.shape[1:]),
            "seconds_features": t_feat,
            "seconds_total": time.perf_counter() - t0,
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="detcon pretraining checkpoint")
    src.add_argument("--random", action="store_true", help="random-init backbone (floor)")
    p.add_argument("--arch", default="resnet18", help="architecture for --random")
    p.add_argument("--data", required=True, help="VOC-layout root")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output-stride",
        type=int,
        default=32,
        choices=(8, 16, 32),
        help="probe features at this stride (layer3/4 dilated, same weights)",
    )
    args = p.parse_args(argv)
    result = run(args)
    from detcon.fileio import atomic_write

    out = Path(args.out)
    with atomic_write(out, "w") as f:
        f.write(json.dumps(result, indent=1))
    m = result["metrics"]
    print(
        f"mIoU {m['miou']:.4f}  object IoU {m['object_iou']:.4f}  pixel acc {m['pixel_accuracy']:.4f}"
        f"  ({m['seconds_total']:.0f} s) -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
