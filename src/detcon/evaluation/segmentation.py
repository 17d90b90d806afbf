"""Semantic segmentation transfer: linear probe and FCN fine-tuning (PASCAL VOC or Cityscapes).

- ``linear``: the backbone is frozen in eval mode; the last-stage features are standardised
  per channel (BatchNorm without affine parameters) and a 1x1 conv maps them to class logits,
  upsampled bilinearly to the input size. Cheap probe of spatial features.
- ``finetune``: FCN (torchvision's ``FCNHead``: 3x3 conv to C/4, BN, ReLU, dropout 0.1, 1x1
  conv) on the backbone, all layers trained. By default ``layer3``/``layer4`` are dilated
  (strides replaced by dilation 2 / 4, output stride 8, as torchvision's FCN-ResNet);
  ``dilate=False`` keeps output stride 32. Weights are the same tensors either way.

Training: SGD momentum 0.9, poly learning-rate decay (power 0.9), cross-entropy with
``ignore_index=255``; evaluation on full-resolution val images, batch 1, mIoU from the
accumulated confusion matrix. Single process (see docs/evaluation.md for the DDP note).
"""

from __future__ import annotations

import logging
import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detcon.distributed import pick_device
from detcon.evaluation.cityscapes import NUM_CLASSES as CITYSCAPES_CLASSES
from detcon.evaluation.cityscapes import CityscapesSegmentation, detect_layout
from detcon.evaluation.common import (
    assert_unchanged,
    backbone_from_config,
    check_config,
    snapshot_state,
)
from detcon.evaluation.config import SegmentEvalConfig
from detcon.evaluation.metrics import IGNORE_INDEX, confusion_matrix, iou_from_confusion
from detcon.evaluation.voc import NUM_CLASSES as VOC_CLASSES
from detcon.evaluation.voc import TrainTransform, VOCSegmentation
from detcon.model.backbone import set_output_stride_

log = logging.getLogger(__name__)


def dilate_backbone_(backbone: nn.Module) -> nn.Module:
    """Output stride 8 (``layer3``/``layer4`` dilated 2 and 4), in place; see
    :func:`detcon.model.backbone.set_output_stride_`."""
    return set_output_stride_(backbone, 8)


class SegmentationModel(nn.Module):
    """``forward(x [B,3,H,W]) -> logits [B,num_classes,H,W]`` (bilinear upsampling)."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, mode: str = "finetune", dilate: bool = True
    ):
        super().__init__()
        if mode not in ("linear", "finetune"):
            raise ValueError(f"mode must be 'linear' or 'finetune', got {mode!r}")
        self.mode = mode
        self.backbone = backbone
        channels = int(cast(Any, backbone).out_channels)  # a ResNet trunk's channel count
        if mode == "linear":
            backbone.requires_grad_(False)
            # per-channel standardisation of the frozen features (BN without affine, running
            # statistics at evaluation), so one learning rate suits every backbone: raw
            # self-supervised features differ in scale by orders of magnitude between methods
            self.head = nn.Sequential(
                nn.BatchNorm2d(channels, affine=False),
                nn.Conv2d(channels, num_classes, kernel_size=1),
            )
        else:
            from torchvision.models.segmentation.fcn import FCNHead

            if dilate:
                dilate_backbone_(backbone)
            self.head = FCNHead(channels, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode == "linear":
            self.backbone.eval()  # frozen: BN keeps its running statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "linear":
            with torch.no_grad():
                feats = self.backbone(x)  # [B, C, h, w]
        else:
            feats = self.backbone(x)
        logits = self.head(feats)  # [B, classes, h, w]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, num_classes: int, device) -> dict:
    """mIoU, per-class IoU, pixel accuracy and the confusion matrix (``[true][pred]`` pixel
    counts) over ``dataset`` (full-resolution images, batch 1)."""
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for img, mask in tqdm(
        DataLoader(dataset, batch_size=1), desc="segment/eval", unit="img", dynamic_ncols=True
    ):
        pred = model(img.to(device)).argmax(1).cpu()  # [1, H, W]
        cm += confusion_matrix(pred, mask, num_classes)
    iou, miou = iou_from_confusion(cm)
    pixel_acc = (cm.diag().sum() / cm.sum().clamp(min=1)).item()
    return {
        "miou": miou,
        "pixel_accuracy": pixel_acc,
        "per_class_iou": [None if math.isnan(v) else v for v in iou.tolist()],
        "confusion_matrix": cm.tolist(),  # cm[true][pred] pixel counts
    }


def train_segmentation(
    model: SegmentationModel,
    loader,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    device,
    max_iters: int | None = None,
) -> float:
    """SGD + poly decay; returns the last loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    total = epochs * len(loader)
    if max_iters is not None:
        total = min(total, max_iters)
    if total < 1:
        raise ValueError("no training steps: check --epochs / --max-iters and the split size")
    step, loss = 0, torch.tensor(float("nan"))
    bar = tqdm(total=total, desc=f"segment/{model.mode}", unit="step", dynamic_ncols=True)
    model.train()
    while step < total:
        for img, mask in loader:
            for g in opt.param_groups:  # poly decay, a pure function of the step
                g["lr"] = lr * (1 - step / total) ** 0.9
            logits = model(img.to(device))
            loss = F.cross_entropy(logits, mask.to(device), ignore_index=IGNORE_INDEX)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite segmentation loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= total:
                break
    bar.close()
    return loss.item()


def resolve_dataset(cfg: SegmentEvalConfig) -> tuple[str, type, int]:
    """``(layout, dataset class, number of classes)`` for ``cfg``: the layout is
    ``cfg.dataset`` or detected from ``cfg.data``; the class count is ``cfg.num_classes`` or
    the layout's (21 VOC, 19 Cityscapes, which admits no other count)."""
    layout = cfg.dataset or detect_layout(cfg.data)
    dataset_cls: type[CityscapesSegmentation] | type[VOCSegmentation]
    if layout == "cityscapes":
        dataset_cls, default_classes = CityscapesSegmentation, CITYSCAPES_CLASSES
    elif layout == "voc":
        dataset_cls, default_classes = VOCSegmentation, VOC_CLASSES
    else:
        raise ValueError(f"--dataset must be 'voc' or 'cityscapes', got {layout!r}")
    num_classes = default_classes if cfg.num_classes is None else cfg.num_classes
    if layout == "cityscapes" and num_classes != CITYSCAPES_CLASSES:
        raise ValueError(
            f"Cityscapes is evaluated on {CITYSCAPES_CLASSES} train ids; got --num-classes "
            f"{num_classes}"
        )
    return layout, dataset_cls, num_classes


def _train_loader(train_set, cfg: SegmentEvalConfig, device: torch.device) -> DataLoader:
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training images < --batch-size {cfg.batch_size}")
    return loader


def _config_record(cfg: SegmentEvalConfig, layout: str, train_set, val_set) -> dict:
    """Every hyperparameter the run used, with the derived ones resolved (for the JSON)."""
    return {
        "dataset": layout,
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "lr": cfg.resolved_lr,
        "schedule": "poly0.9",
        "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size,
        "crop": cfg.image_size,
        "scale_range": [0.5, 2.0],
        "dilated": cfg.mode == "finetune" and cfg.dilate,
        "train_split": cfg.train_split,
        "val_split": cfg.val_split,
        "num_train": len(train_set),
        "num_val": len(val_set),
        "max_iters": cfg.max_iters,
    }


def run_segmentation(cfg: SegmentEvalConfig) -> dict:
    """``detcon eval segment``: train on ``train_split``, report mIoU on ``val_split``.

    ``metrics`` holds ``miou``, ``pixel_accuracy``, ``per_class_iou`` (``None`` for a class
    absent from both ground truth and predictions), ``confusion_matrix`` (``[true][pred]``
    pixel counts), ``final_train_loss`` and, when the dataset names its classes,
    ``class_names``."""
    check_config(cfg, SegmentEvalConfig)
    layout, dataset_cls, num_classes = resolve_dataset(cfg)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    backbone, source = backbone_from_config(cfg)
    before = snapshot_state(backbone) if cfg.mode == "linear" else None
    model = SegmentationModel(backbone, num_classes, cfg.mode, dilate=cfg.dilate).to(device)
    train_set = dataset_cls(
        cfg.data, cfg.train_split, TrainTransform(cfg.image_size, seed=cfg.seed)
    )
    val_set = dataset_cls(cfg.data, cfg.val_split)
    last_loss = train_segmentation(
        model,
        _train_loader(train_set, cfg, device),
        epochs=cfg.epochs,
        lr=cfg.resolved_lr,
        weight_decay=cfg.weight_decay,
        device=device,
        max_iters=cfg.max_iters,
    )
    metrics = evaluate_segmentation(model, val_set, num_classes, device)
    metrics["final_train_loss"] = last_loss
    names = getattr(val_set, "class_names", None)
    if names is not None and len(names) == num_classes:
        metrics["class_names"] = list(names)  # aligned with per_class_iou
    if before is not None:
        assert_unchanged(backbone, before)  # the linear probe never touches the backbone
    return {
        "protocol": f"segment-{cfg.mode}",
        "backbone": source,
        "config": _config_record(cfg, layout, train_set, val_set),
        "metrics": metrics,
    }
