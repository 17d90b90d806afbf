"""Data: robust image decoding, datasets that yield two augmented views with their region
maps, and the paired (geometry) + per-image (photometry) augmentations.
"""

from __future__ import annotations

from detcon.data.builtin import (
    BuiltinDataset,
    build_pretrain_dataset,
    builtin_images,
)
from detcon.data.datasets import (
    CocoDataset,
    ImageClassTreeDataset,
    ImageFolderDataset,
    ImageListDataset,
    SyntheticDataset,
    scan_images,
)
from detcon.data.decode import (
    DecodeError,
    load_image,
)
from detcon.data.transforms import TwoViewTransform

__all__ = [
    "load_image",
    "DecodeError",
    "TwoViewTransform",
    "scan_images",
    "ImageListDataset",
    "ImageFolderDataset",
    "ImageClassTreeDataset",
    "CocoDataset",
    "SyntheticDataset",
    "builtin_images",
    "BuiltinDataset",
    "build_pretrain_dataset",
]
