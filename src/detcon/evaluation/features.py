"""Frozen-backbone feature extraction for the image-level probes (linear, kNN).

Features are the global average pool of the last stage, computed once with the backbone in
eval mode (BN running statistics) on a deterministic centre crop: resize the short side to
``size * 256 / 224`` then centre-crop ``size`` (the standard ImageNet evaluation transform).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detcon.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def eval_transform(size: int = 224):
    """Resize short side to ``round(size * 256 / 224)``, centre-crop ``size``, normalise."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(round(size * 256 / 224)),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader, device: torch.device | str = "cpu", desc: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-average-pooled features of every batch of ``loader``.

    ``loader`` yields ``(images [B,3,H,W], labels [B])``. The backbone is put in eval mode
    (its training flag is restored afterwards). Returns (Float[N, C] on CPU, Long[N] on CPU).
    """
    was_training = backbone.training
    backbone.eval().to(device)
    feats, labels = [], []
    for images, y in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True):
        f = backbone(images.to(device, non_blocking=True))  # [B, C, h, w]
        feats.append(f.float().mean(dim=(2, 3)).cpu())  # [B, C]
        labels.append(torch.as_tensor(y).long())
    backbone.train(was_training)
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats), torch.cat(labels)


def image_folder(root: str | os.PathLike, split: str, size: int):
    """``torchvision.datasets.ImageFolder`` on ``root/split`` with :func:`eval_transform`."""
    from torchvision.datasets import ImageFolder

    path = Path(root) / split
    if not path.is_dir():
        raise FileNotFoundError(f"expected an ImageFolder split at {path} (class sub-folders)")
    return ImageFolder(str(path), transform=eval_transform(size))


def image_folder_features(
    backbone: nn.Module,
    root: str | os.PathLike,
    *,
    image_size: int,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> dict:
    """Features for ``root/train`` and ``root/val`` (same class list required).

    Returns ``{"train": (F[N,C], y[N]), "val": (F[M,C], y[M]), "num_classes": int,
    "classes": list[str]}``.
    """
    out: dict[str, Any] = {}
    classes: list[str] = []
    for split in ("train", "val"):
        ds = image_folder(root, split, image_size)
        if split == "train":
            classes = ds.classes
        elif ds.classes != classes:
            raise ValueError(f"train/ and val/ class folders differ: {classes} vs {ds.classes}")
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        out[split] = extract_features(backbone, loader, device, desc=f"features/{split}")
    out["num_classes"] = len(classes)
    out["classes"] = classes
    return out
