"""Transfer evaluation of pretrained backbones: linear probe, kNN, semantic segmentation
(linear probe and FCN fine-tuning on PASCAL VOC or Cityscapes layout) and detection / instance
segmentation (Mask R-CNN + FPN on COCO layout). See ``docs/evaluation.md`` for the protocols.
"""

from __future__ import annotations

from detcon.evaluation.cityscapes import CityscapesSegmentation
from detcon.evaluation.coco import CocoInstances
from detcon.evaluation.common import (
    load_backbone,
    save_outputs,
    write_result,
)
from detcon.evaluation.config import (
    DetectEvalConfig,
    EvalConfig,
    KnnEvalConfig,
    LinearEvalConfig,
    SegmentEvalConfig,
)
from detcon.evaluation.detection import run_detection
from detcon.evaluation.features import (
    eval_transform,
    extract_features,
)
from detcon.evaluation.knn import (
    knn_classify,
    run_knn,
)
from detcon.evaluation.linear import (
    run_linear,
    train_linear_probe,
)
from detcon.evaluation.metrics import (
    confusion_matrix,
    iou_from_confusion,
    topk_accuracy,
)
from detcon.evaluation.segmentation import run_segmentation
from detcon.evaluation.voc import VOCSegmentation

__all__ = [
    "EvalConfig",
    "LinearEvalConfig",
    "KnnEvalConfig",
    "SegmentEvalConfig",
    "DetectEvalConfig",
    "load_backbone",
    "save_outputs",
    "write_result",
    "extract_features",
    "eval_transform",
    "train_linear_probe",
    "run_linear",
    "knn_classify",
    "run_knn",
    "confusion_matrix",
    "iou_from_confusion",
    "topk_accuracy",
    "VOCSegmentation",
    "CityscapesSegmentation",
    "run_segmentation",
    "CocoInstances",
    "run_detection",
]
