"""Transfer evaluation of pretrained backbones: linear probe, kNN, semantic segmentation
(linear probe and FCN fine-tuning on PASCAL VOC or Cityscapes layout) and detection / instance
segmentation (Mask R-CNN + FPN on COCO layout). See ``docs/evaluation.md`` for the protocols.

Names are resolved lazily so that importing the package stays cheap.
"""

from __future__ import annotations

from detcon._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "load_backbone": "common",
    "write_result": "common",
    "extract_features": "features",
    "eval_transform": "features",
    "train_linear_probe": "linear",
    "run_linear": "linear",
    "knn_classify": "knn",
    "run_knn": "knn",
    "confusion_matrix": "metrics",
    "iou_from_confusion": "metrics",
    "topk_accuracy": "metrics",
    "VOCSegmentation": "voc",
    "CityscapesSegmentation": "cityscapes",
    "run_segmentation": "segmentation",
    "CocoInstances": "coco",
    "run_detection": "detection",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
