"""PASCAL VOC semantic segmentation layout and paired (image, mask) transforms.

Layout under ``root`` (the ``VOC2012`` folder, or any folder laid out the same way)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png           # palette ("P") PNG: pixel value = class id, 255 = void
    ImageSets/Segmentation/<split>.txt   # one id per line (train, val, train_aug, ...)

For ``train_aug`` (the 10,582-image SBD-augmented set) put the extra masks, converted to palette
PNGs, into ``SegmentationClassAug/``; it is used instead of ``SegmentationClass`` when present.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from detcon.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detcon.evaluation.metrics import IGNORE_INDEX

# PASCAL VOC 2012 segmentation classes in label order (0 = background)
CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)  # 21


class ItemRandom:
    """Per-item ``random.Random`` streams for the augmentations of an evaluation dataset.

    One shared ``random.Random(seed)`` is copied into every DataLoader worker (and re-copied
    each epoch), so with 2 workers the draws come in pairs and repeat every epoch. Instead,
    item ``index`` is augmented with ``random.Random(item_seed(seed ^ base, draw, index))``
    (:func:`detcon.data.loader.item_seed`): ``draw`` counts how often this process has drawn
    that index (0 in the first epoch, then 1, ...), and ``base`` is the DataLoader's base seed
    of the current workers (drawn from the main process's torch RNG when the workers start,
    i.e. every epoch without persistent workers; 0 in the main process). Items differ from each
    other, epochs differ, and a run seeded with ``torch.manual_seed`` is reproducible."""

    def __init__(self, seed: int | None = None):
        self.seed = random.randrange(2**63) if seed is None else int(seed)
        self._draws: dict[int, int] = {}

    def __call__(self, index: int) -> random.Random:
        from detcon.data.loader import item_seed

        info = torch.utils.data.get_worker_info()
        base = 0 if info is None else int(info.seed) - int(info.id)
        draw = self._draws.get(index, 0)
        self._draws[index] = draw + 1
        return random.Random(item_seed(self.seed ^ base, draw, index))


class VOCSegmentation(torch.utils.data.Dataset):
    """Items ``(image float[3,H,W] normalised, mask int64[H,W])`` after ``transform``.

    Without a transform, the image is returned at full resolution (for evaluation).
    ``class_names`` lists the 21 VOC classes in label order.
    """

    class_names = CLASS_NAMES

    def __init__(self, root: str | Path, split: str = "train", transform=None):
        self.root = Path(root)
        ids_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not ids_file.is_file():
            raise FileNotFoundError(f"VOC split file not found: {ids_file}")
        self.ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"{ids_file} lists no images")
        aug = self.root / "SegmentationClassAug"
        self.mask_dir = aug if aug.is_dir() else self.root / "SegmentationClass"
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image = Image.open(self.root / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
        mask_path = self.mask_dir / f"{image_id}.png"
        mask = read_label_png(mask_path, image)
        img = to_normalized_tensor(image)
        target = torch.from_numpy(mask)
        if self.transform is not None:
            img, target = apply_paired(self.transform, img, target, i)
        return img, target


def apply_paired(transform, img: torch.Tensor, target: torch.Tensor, index: int):
    """``transform(img, target)``; a :class:`TrainTransform` draws from its per-item stream."""
    if isinstance(transform, TrainTransform):
        return transform(img, target, rng=transform.item_rng(index))
    return transform(img, target)


def read_label_png(path: Path, image: Image.Image | None = None) -> np.ndarray:
    """An 8-bit palette or grey PNG of class ids -> int64 ``[H, W]``; a colour-rendered mask
    (RGB) is refused, and with ``image`` the sizes must agree."""
    mask_img = Image.open(path)
    if mask_img.mode not in ("P", "L"):
        raise ValueError(
            f"{path}: expected a palette or grey PNG of class ids, got mode "
            f"{mask_img.mode} (a colour-rendered mask cannot be read as labels)"
        )
    mask = np.array(mask_img, dtype=np.int64)
    if image is not None and mask.shape != (image.height, image.width):
        raise ValueError(f"{path}: mask {mask.shape} vs image {image.size[::-1]}")
    return mask


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float[3,H,W] with the ImageNet mean/std."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


class TrainTransform:
    """Random scale in ``scale_range``, pad to ``crop`` (image 0 = mean colour, mask 255),
    random ``crop`` x ``crop`` window, horizontal flip; geometry shared by image and mask,
    bilinear for the image and nearest for the mask.

    Datasets call it with ``rng=transform.item_rng(index)`` (an :class:`ItemRandom` stream per
    item and epoch, safe with DataLoader workers); a direct call without ``rng`` draws from
    one ``random.Random(seed)``."""

    def __init__(self, crop: int, scale_range=(0.5, 2.0), seed: int | None = None):
        self.crop, self.scale_range = crop, scale_range
        self.rng = random.Random(seed)
        self.item_rng = ItemRandom(seed)

    def __call__(self, img: torch.Tensor, mask: torch.Tensor, rng: random.Random | None = None):
        rng = self.rng if rng is None else rng
        s = rng.uniform(*self.scale_range)
        h, w = mask.shape
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        img = F.interpolate(img[None], (nh, nw), mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, None].float(), (nh, nw), mode="nearest")[0, 0].long()
        ph, pw = max(self.crop - nh, 0), max(self.crop - nw, 0)
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
        top = rng.randint(0, mask.shape[0] - self.crop)
        left = rng.randint(0, mask.shape[1] - self.crop)
        img = img[:, top : top + self.crop, left : left + self.crop]
        mask = mask[top : top + self.crop, left : left + self.crop]
        if rng.random() < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        return img.contiguous(), mask.contiguous()
