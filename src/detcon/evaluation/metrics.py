"""Evaluation metrics as pure tensor functions: top-k accuracy, confusion matrix, IoU."""

from __future__ import annotations

import torch

IGNORE_INDEX = 255  # PASCAL VOC "void" label (object borders, difficult regions)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Fraction of rows whose true label is among the ``k`` highest scores, for each ``k``.

    ``scores`` [M, num_classes] float, ``labels`` [M] long. A ``k`` (other than 1) that is not
    below the number of classes is left out: it would always be 1.0 (no ``top5`` for 5 or
    fewer classes). Ties are broken by ``torch.topk``'s order. Returns ``{"top1": ...,
    "top5": ...}`` in [0, 1].
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [M, C] and labels [M]; got {scores.shape}, {labels.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError("topk_accuracy on an empty set")
    out = {}
    ks = [k for k in ks if k == 1 or k < scores.shape[1]]
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices  # [M, maxk]
    hit = top == labels[:, None]  # [M, maxk]
    for k in ks:
        out[f"top{k}"] = hit[:, : min(k, maxk)].any(dim=1).float().mean().item()
    return out


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Confusion matrix ``cm[t, p]`` = number of pixels with ground truth ``t`` predicted ``p``.

    ``pred`` and ``target`` are integer tensors of the same shape. Pixels whose target equals
    ``ignore_index`` are skipped; any other target outside ``[0, num_classes)`` is an error (it
    would silently corrupt the counts). Returns Long[num_classes, num_classes].
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)].unique().tolist()
        raise ValueError(f"target labels {bad[:10]} outside [0, {num_classes}) and not ignore")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predictions outside [0, {num_classes})")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-class IoU = TP / (TP + FP + FN) and their mean over classes that occur.

    A class absent from both ground truth and predictions has IoU ``nan`` and is left out of
    the mean (the usual VOC convention). Returns (Float[num_classes], mIoU in [0, 1]).
    """
    cm = cm.double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1) - tp  # predicted + actual - overlap
    iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~iou.isnan()
    miou = iou[valid].mean().item() if valid.any() else float("nan")
    return iou.float(), miou
