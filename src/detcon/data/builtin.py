"""Built-in photographs (bundled with scikit-image, no download) and the pretraining factory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .datasets import (
    CocoDataset,
    ImageClassTreeDataset,
    ImageFolderDataset,
    ImageListDataset,
    SyntheticDataset,
)
from .transforms import TwoViewTransform

__all__ = ["BUILTIN_PHOTOS", "builtin_images", "BuiltinDataset", "build_pretrain_dataset"]

#: RGB photographs shipped inside the scikit-image wheel (checked against skimage 0.26's
#: ``skimage/data`` folder; everything else there is grayscale, synthetic or fetched on demand).
BUILTIN_PHOTOS = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",  # the cat
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
}


def builtin_images() -> list[Path]:
    """Paths of the bundled RGB photographs that exist in the installed scikit-image (in
    ``BUILTIN_PHOTOS`` order). Never downloads; raises if none is present."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    found = [folder / f for f in BUILTIN_PHOTOS.values() if (folder / f).is_file()]
    if not found:
        raise FileNotFoundError(f"no bundled photographs found in {folder}")
    return found


class BuiltinDataset(ImageListDataset):
    """Two-view dataset over :func:`builtin_images` (``repeat`` makes an epoch longer)."""

    def __init__(self, masks: Any = "fh", transform=None, **kwargs):
        super().__init__(builtin_images(), masks, transform, **kwargs)


def build_pretrain_dataset(
    data: str | os.PathLike,
    masks: str | os.PathLike = "fh",
    image_size: int = 224,
    *,
    crop: str = "official",
    coco_json: str | os.PathLike | None = None,
    class_tree: bool = False,
    repeat: int = 1,
    synthetic_size: int = 64,
    seed: int = 0,
    compute_missing: bool = True,
    augment_on: str = "host",
    subset: str | os.PathLike = "",
    fraction: float = 1.0,
    **transform_kwargs,
):
    """Build the pretraining dataset named by ``data`` with region maps named by ``masks``.

    Args:
        data: ``"builtin"`` (scikit-image photographs), ``"synthetic"`` or ``"synthetic:N"``
            (N random blocky images, masks ignored), or an image folder (recursive).
        masks: a cache folder written by ``detcon masks`` or a generator spec: ``"fh"``,
            ``"grid"``, ``"whole"`` (BYOL/SimCLR), ``"coco"`` (needs ``coco_json``),
            ``"fh:scale=500,min_size=200"``...
        image_size: side of the square views.
        crop: ``"official"`` or ``"torchvision"`` crop window (see TwoViewTransform).
        coco_json: COCO instances file; ``data`` is then the images folder.
        class_tree: treat ``data`` as ``root/<class>/...`` and add ``"label"`` to items.
        repeat: repeat the file list per epoch (tiny datasets such as builtin).
        compute_missing: with a cache folder, compute the maps of images without an entry
            on the fly (True) or refuse up front (False; see ``ImageListDataset``).
        subset: keep only the images a list names (a file, or ``imagenet100``; see
            :mod:`detcon.data.subsets`), before the cache's coverage check.
        fraction: keep this fraction of them, drawn by ``seed`` (per class with
            ``class_tree``).
        augment_on: ``"host"`` (colour ops in the loader workers) or ``"device"``: items carry
            uint8 views and their drawn colour parameters ``photo_a`` / ``photo_b``; the train
            step applies them with :func:`detcon.data.device_augment.augment_on_device`.
        transform_kwargs: more :class:`TwoViewTransform` arguments, e.g. ``photometric=
            "official"`` (dm_pix colour semantics, the default) or ``"torchvision"``.

    Returns a ``torch.utils.data.Dataset`` of dicts ``view_a, view_b, mask_a, mask_b, index``
    (plus ``photo_a, photo_b`` with ``augment_on="device"``).
    """
    transform = TwoViewTransform(image_size, crop=crop, augment_on=augment_on, **transform_kwargs)
    data_s = str(data)
    select = _selector(subset, fraction, seed, data_s)
    if data_s == "builtin":
        if select is not None:
            files = builtin_images()
            files = [files[i] for i in select(files, None)]
            return ImageListDataset(
                files, masks, transform, repeat=repeat, compute_missing=compute_missing
            )
        return BuiltinDataset(masks, transform, repeat=repeat, compute_missing=compute_missing)
    if data_s.startswith("synthetic"):
        n = int(data_s.split(":", 1)[1]) if ":" in data_s else 64
        return SyntheticDataset(n, size=synthetic_size, seed=seed, transform=transform)
    if not Path(data_s).is_dir():
        raise FileNotFoundError(
            f"data {data_s!r} is not a folder; use a folder of images, 'builtin' or 'synthetic'"
        )
    if coco_json is not None:
        if select is not None:
            raise ValueError("data.subset / data.fraction do not apply to COCO (data.coco_json)")
        return CocoDataset(
            data_s, coco_json, masks, transform, repeat=repeat, compute_missing=compute_missing
        )
    if isinstance(masks, (str, os.PathLike)):  # parsed before the folder is scanned
        from detcon.masks.source import GroundTruth, parse_mask_source

        if isinstance(parse_mask_source(masks), GroundTruth):
            raise ValueError("masks='coco' needs coco_json= (the instances JSON file)")
    cls = ImageClassTreeDataset if class_tree else ImageFolderDataset
    return cls(
        data_s, masks, transform, select=select, repeat=repeat, compute_missing=compute_missing
    )


def _selector(subset, fraction: float, seed: int, data: str):
    """``select(files, labels) -> indices`` for the dataset classes, or None (keep all)."""
    subset = str(subset or "")
    if not subset and fraction == 1:
        return None
    if data.startswith("synthetic"):
        raise ValueError("data.subset / data.fraction do not apply to synthetic data")
    import logging

    from .subsets import describe, read_subset, select_indices

    entries = read_subset(subset) if subset else None

    def select(files, labels):
        root = files[0].parent if data == "builtin" else Path(data)
        keep = select_indices(files, root, entries, fraction, seed, labels)
        logging.getLogger("detcon.data").info(describe(len(files), len(keep), subset, fraction))
        return keep

    return select
