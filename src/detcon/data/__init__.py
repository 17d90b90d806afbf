"""Data: robust image decoding, datasets that yield two augmented views with their region
maps, and the paired (geometry) + per-image (photometry) augmentations.

Names are resolved lazily from the submodules listed in ``_EXPORTS`` so that importing
the package stays cheap (scikit-image is only imported when a generator is used).
"""

from __future__ import annotations

import importlib

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


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
