"""Region maps: generators (FH, grid, ground truth, whole image), the mask cache, and the
reduction to the feature grid with per-view id sampling.

Names are resolved lazily from the submodules listed in ``_EXPORTS`` so that importing
the package stays cheap (scikit-image is imported only when a generator is used).
"""

from __future__ import annotations

from detcon._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "downsample_masks": "sampling",
    "sample_mask_ids": "sampling",
    "MaskGenerator": "generators",
    "FHGenerator": "generators",
    "GridGenerator": "generators",
    "WholeImageGenerator": "generators",
    "CallableGenerator": "generators",
    "build_generator": "generators",
    "MaskCache": "cache",
    "CocoMasks": "coco",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
