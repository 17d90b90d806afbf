"""COCO instances layout for Mask R-CNN: ``images/`` + ``instances_*.json`` (polygons or RLE).

Items are ``(image float[3,H,W] in [0,1], target)`` with ``target`` the dict torchvision's
detection models expect: ``boxes`` float[N,4] xyxy, ``labels`` int64[N] in 1..K (contiguous;
0 is background), ``masks`` uint8[N,H,W], ``image_id`` int. Crowd annotations and boxes with
no area are skipped for training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detcon.evaluation.voc import ItemRandom


class CocoInstances(torch.utils.data.Dataset):
    """COCO instance annotations; ``train=True`` drops images with no usable annotation and
    applies a random horizontal flip."""

    def __init__(
        self, images: str | Path, ann_file: str | Path, train: bool = False, seed: int = 0
    ):
        from pycocotools.coco import COCO

        self.images = Path(images)
        if not self.images.is_dir():
            raise FileNotFoundError(f"COCO images folder not found: {self.images}")
        if not Path(ann_file).is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
        self.coco = COCO(str(ann_file))
        self.cat_ids = sorted(self.coco.getCatIds())  # label l (1..K) <-> cat_ids[l - 1]
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if self._usable(self.coco.imgToAnns.get(i, []))]
        if not ids:
            raise ValueError(f"{ann_file}: no images{' with usable annotations' if train else ''}")
        self.ids, self.train = ids, train
        self.item_rng = ItemRandom(seed)  # per item and epoch: safe with DataLoader workers

    @staticmethod
    def _usable(anns) -> bool:
        return any(not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in anns)

    @property
    def num_classes(self) -> int:
        """Foreground classes K (the model has K + 1 outputs with background)."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        info = self.coco.imgs[image_id]
        image = Image.open(self.images / info["file_name"]).convert("RGB")
        w, h = image.size
        anns = [
            a
            for a in self.coco.imgToAnns.get(image_id, [])
            if not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1
        ]
        boxes = torch.tensor(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w))
        target = {
            "boxes": boxes,
            "labels": torch.tensor(
                [self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
            "image_id": image_id,
        }
        img = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.train and self.item_rng(i).random() < 0.5:
            img, target["masks"] = img.flip(-1), target["masks"].flip(-1)
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
        return img, target


def collate(batch):
    """Detection batches are lists: images differ in size."""
    return tuple(zip(*batch, strict=True))
