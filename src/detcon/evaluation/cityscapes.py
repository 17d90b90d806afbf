"""Cityscapes semantic segmentation, read from the standard download layout (no conversion).

Layout under ``root`` (the folder holding ``leftImg8bit/`` and ``gtFine/``)::

    leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png   # preferred when present
    gtFine/<split>/<city>/<name>_gtFine_labelIds.png        # else: 34 label ids, mapped here

``<split>`` is ``train`` (the 2,975 "train_fine" images), ``val`` (500) or ``test`` (no public
labels). Label ids are mapped to the 19 evaluation classes (train ids 0..18) with a lookup
table; every other id (unlabeled, ego vehicle, ..., license plate) becomes 255 = ignore.
Items are the same as :class:`detcon.evaluation.voc.VOCSegmentation`'s, so the VOC paired
transforms and the segmentation training / evaluation code apply unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detcon.evaluation.metrics import IGNORE_INDEX
from detcon.evaluation.voc import apply_paired, read_label_png, to_normalized_tensor

# label id -> train id for the 19 evaluated classes (Cityscapes "labels.py" definitions)
LABEL_TO_TRAIN_ID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CLASS_NAMES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
NUM_CLASSES = len(CLASS_NAMES)  # 19


def _build_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)  # every 8-bit value not listed -> ignore
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


LABEL_ID_LUT = _build_lut()  # int64[256]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a ``labelIds`` array (integers in [0, 255], any shape) to train ids: int64, same
    shape, values in 0..18 or 255 (ignore)."""
    label_ids = np.asarray(label_ids)
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
        raise ValueError(
            f"label ids must lie in [0, 255], got [{label_ids.min()}, {label_ids.max()}]"
        )
    return LABEL_ID_LUT[label_ids.astype(np.int64)]


class CityscapesSegmentation(torch.utils.data.Dataset):
    """Items ``(image float[3,H,W] normalised, mask int64[H,W] in 0..18 or 255)`` after
    ``transform`` (a paired transform such as :class:`detcon.evaluation.voc.TrainTransform`).

    Without a transform, the image is returned at full resolution (1024 x 2048 for the real
    data; for evaluation). ``class_names`` lists the 19 classes in train-id order.
    """

    class_names = CLASS_NAMES

    def __init__(self, root: str | Path, split: str = "train", transform=None):
        self.root = Path(root)
        image_dir = self.root / "leftImg8bit" / split
        gt_dir = self.root / "gtFine" / split
        if not image_dir.is_dir():
            parent = self.root / "leftImg8bit"
            have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            raise FileNotFoundError(
                f"Cityscapes images not found: expected {image_dir}/<city>/"
                f"<name>_leftImg8bit.png (splits present under {parent}: {have or 'none'})"
            )
        if not gt_dir.is_dir():
            raise FileNotFoundError(
                f"Cityscapes labels not found: expected {gt_dir}/<city>/"
                "<name>_gtFine_labelIds.png (or _gtFine_labelTrainIds.png)"
            )
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise ValueError(
                f"no images matching {image_dir}/<city>/<name>_leftImg8bit.png "
                "(one sub-folder per city is expected)"
            )
        self.samples: list[tuple[Path, Path, bool]] = []  # (image, mask, mask holds train ids)
        for img_path in images:
            city, name = img_path.parent.name, img_path.name[: -len("_leftImg8bit.png")]
            train_ids = gt_dir / city / f"{name}_gtFine_labelTrainIds.png"
            label_ids = gt_dir / city / f"{name}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.samples.append((img_path, train_ids, True))
            elif label_ids.is_file():
                self.samples.append((img_path, label_ids, False))
            else:
                raise FileNotFoundError(
                    f"no label for {img_path}: expected {label_ids} (or {train_ids.name})"
                )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img_path, mask_path, is_train_ids = self.samples[i]
        image = Image.open(img_path).convert("RGB")
        ids = read_label_png(mask_path, image)  # refuses the _gtFine_color.png rendering
        if is_train_ids:
            bad = (ids >= NUM_CLASSES) & (ids != IGNORE_INDEX)
            if bad.any():
                raise ValueError(
                    f"{mask_path}: train-id mask holds values {np.unique(ids[bad])[:8].tolist()} "
                    f"outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}"
                )
            mask = ids
        else:
            mask = label_ids_to_train_ids(ids)
        img = to_normalized_tensor(image)
        target = torch.from_numpy(mask)
        if self.transform is not None:
            img, target = apply_paired(self.transform, img, target, i)
        return img, target


def detect_layout(root: str | os.PathLike) -> str:
    """``"cityscapes"`` if ``root/leftImg8bit`` exists, ``"voc"`` if ``root/JPEGImages`` does;
    an error naming both expected folders when neither (or both) is found."""
    root = Path(root)
    city, voc = (root / "leftImg8bit").is_dir(), (root / "JPEGImages").is_dir()
    if city and voc:
        raise ValueError(f"{root} holds both leftImg8bit/ and JPEGImages/: pass --dataset")
    if city:
        return "cityscapes"
    if voc:
        return "voc"
    raise FileNotFoundError(
        f"cannot tell the dataset layout of {root}: expected {root / 'leftImg8bit'} "
        f"(Cityscapes) or {root / 'JPEGImages'} (PASCAL VOC); pass --dataset to choose"
    )
