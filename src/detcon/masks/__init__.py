"""Region maps: generators (FH, grid, ground truth, whole image), the mask cache, and the
reduction to the feature grid with per-view id sampling.

scikit-image and numba are imported only when a generator first runs, so importing the package
stays cheap.
"""

from __future__ import annotations

from detcon.masks.cache import MaskCache, open_cache
from detcon.masks.coco import CocoMasks
from detcon.masks.generators import (
    CallableGenerator,
    FHGenerator,
    GridGenerator,
    MaskGenerator,
    WholeImageGenerator,
    build_generator,
)
from detcon.masks.packed import CorruptCacheError, PackedMaskCache
from detcon.masks.sampling import (
    downsample_masks,
    sample_mask_ids,
)
from detcon.masks.source import (
    CacheFolder,
    Generated,
    GroundTruth,
    MaskSource,
    WholeImage,
    parse_mask_source,
)

__all__ = [
    "downsample_masks",
    "sample_mask_ids",
    "MaskGenerator",
    "FHGenerator",
    "GridGenerator",
    "WholeImageGenerator",
    "CallableGenerator",
    "build_generator",
    "MaskCache",
    "open_cache",
    "PackedMaskCache",
    "CorruptCacheError",
    "MaskSource",
    "CacheFolder",
    "Generated",
    "GroundTruth",
    "WholeImage",
    "parse_mask_source",
    "CocoMasks",
]
