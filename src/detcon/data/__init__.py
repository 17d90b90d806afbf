"""Data: robust image decoding, datasets that yield two augmented views with their region
maps, and the paired (geometry) + per-image (photometry) augmentations.

Names are resolved lazily from the submodules listed in ``_EXPORTS`` so that importing
the package stays cheap (heavy imports happen on first use).
"""

from __future__ import annotations

from detcon._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "load_image": "decode",
    "DecodeError": "decode",
    "TwoViewTransform": "transforms",
    "scan_images": "datasets",
    "ImageListDataset": "datasets",
    "ImageFolderDataset": "datasets",
    "ImageClassTreeDataset": "datasets",
    "CocoDataset": "datasets",
    "SyntheticDataset": "datasets",
    "builtin_images": "builtin",
    "BuiltinDataset": "builtin",
    "build_pretrain_dataset": "builtin",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
