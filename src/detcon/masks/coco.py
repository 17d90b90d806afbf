"""Ground-truth region maps from a COCO ``instances_*.json`` (needs ``pycocotools``).

Each image's instance masks are painted **in order of decreasing area**, so a small object
lying on a large one stays visible (painting in annotation order can hide it entirely).
Background is id 0; the painted instances get ids 1.. in paint order; instances fully covered
by later (smaller) ones disappear and the ids are then made contiguous ``0..n-1``.
Crowd annotations (``iscrowd=1``) are painted like any other region.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .generators import relabel_contiguous

__all__ = ["CocoMasks", "require_pycocotools"]


def require_pycocotools():
    """Import ``pycocotools.coco.COCO`` or fail with an install hint."""
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
    except ImportError:
        raise ImportError(
            "COCO ground-truth masks need pycocotools: pip install 'detcon[coco]' "
            "(or pip install pycocotools)"
        ) from None
    return COCO, mask_utils


class CocoMasks:
    """Region maps of the images of one COCO instance annotation file.

    ``name = "coco"``, ``params = {"annotations": <json file name>, "order": "area"}`` (the
    cache key). ``labels(file_name)`` returns ``int32 [H, W]`` ids ``0..n-1`` for the image
    whose ``file_name`` (base name) matches; ``file_names`` lists them.
    """

    name = "coco"

    def __init__(self, instances_json: str | os.PathLike):
        coco_cls, self._mask_utils = require_pycocotools()
        path = Path(instances_json)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints timing lines
            self.coco = coco_cls(str(path))
        self.params = {"annotations": path.name, "order": "area"}
        self._by_name = {
            Path(img["file_name"]).name: img_id for img_id, img in self.coco.imgs.items()
        }

    @property
    def file_names(self) -> list[str]:
        return sorted(self._by_name)

    def image_id(self, file_name: str | os.PathLike) -> int | None:
        return self._by_name.get(Path(file_name).name)

    def labels(self, file_name: str | os.PathLike) -> np.ndarray:
        """Region map ``int32 [H, W]`` of an annotated image (``KeyError`` if not annotated)."""
        img_id = self.image_id(file_name)
        if img_id is None:
            raise KeyError(f"{Path(file_name).name} is not in the COCO annotations")
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        out = np.zeros((h, w), dtype=np.int32)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[img_id], iscrowd=None))
        anns = sorted(anns, key=lambda a: -float(a.get("area", 0.0)))  # large first, small on top
        for k, ann in enumerate(anns, start=1):
            binary = self.coco.annToMask(ann).astype(bool)
            if binary.shape != (h, w):
                raise ValueError(
                    f"annotation {ann.get('id')} mask shape {binary.shape} != {(h, w)}"
                )
            out[binary] = k
        return relabel_contiguous(out)

    def __call__(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - guard
        raise TypeError("CocoMasks needs the file name: use .labels(file_name)")
