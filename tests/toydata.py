"""Toy "object under nuisance" data for the transfer test (tests/test_transfer_toy.py).

Each image is ``size x size`` RGB: a cluttered background (random base colour, pixel noise and
small random-coloured specks) with one object drawn at a random position, scale and rotation,
in a colour far from the background. Two labellings:

* ``task="shape"``: the label is the object's shape (disk, square, triangle, cross), its colour
  is random (radius 22-36 % of the side). Too hard for 30 CPU steps of pretraining (both the
  pretrained and the random backbone probe at chance); kept for longer experiments.
* ``task="colour"``: the label is the object's colour class (red, green, blue, yellow, +-25 per
  channel), its shape is random and it is small (radius 12-20 % of the side).

The region map is the object's ground-truth silhouette (id 1) on background (id 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from detcon.data import TwoViewTransform

SHAPES = ("disk", "square", "triangle", "cross")
MEAN = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
STD = torch.tensor((0.229, 0.224, 0.225))[:, None, None]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """Vertices of ``shape`` (not disk) of circumradius ``r`` rotated by ``angle`` radians."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    else:  # cross: a plus sign with arms of half-width w
        w = 0.3
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
        pts += [(-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (c * x - s * y), cy + r * (s * x + c * y)) for x, y in pts]


HUES = np.array([(220, 30, 30), (30, 200, 30), (40, 40, 230), (230, 220, 30)])


def make_shape_image(rng: np.random.Generator, size: int, label: int, task: str = "shape"):
    """One toy image: ``(uint8 [size, size, 3], int32 region map [size, size])``."""
    base = rng.integers(0, 256, 3)
    while True:  # object colour far enough from the background to be visible
        if task == "shape":
            colour = rng.integers(0, 256, 3)
        else:
            colour = np.clip(HUES[label] + rng.integers(-25, 26, 3), 0, 255)
        if np.abs(colour - base).sum() > 200:
            break
        base = rng.integers(0, 256, 3)
    img = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(6, 14))):  # clutter specks, smaller than any object
        x, y = rng.uniform(0, size, 2)
        d = rng.uniform(1.5, 3.5)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([x - d, y - d, x + d, y + d], fill=fill)
    r = rng.uniform(0.22, 0.36) * size if task == "shape" else rng.uniform(0.12, 0.2) * size
    cx, cy = rng.uniform(r, size - r, 2)
    mask = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask)
    shape = SHAPES[label] if task == "shape" else SHAPES[int(rng.integers(0, 4))]
    if shape == "disk":
        mdraw.ellipse([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=1)
    else:
        mdraw.polygon(_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=1)
    labels = np.asarray(mask, dtype=np.int32)
    pixels = np.asarray(canvas).copy()
    pixels[labels == 1] = np.clip(colour + rng.normal(0, 12, (int(labels.sum()), 3)), 0, 255)
    return pixels, labels


def make_split(n: int, size: int, seed: int, task: str = "shape") -> tuple[list, torch.Tensor]:
    """``n`` images with balanced labels: (list of (uint8 image, int32 map), Long[n] labels)."""
    rng = np.random.default_rng(seed)
    labels = torch.arange(n) % len(SHAPES)
    return [make_shape_image(rng, size, int(y), task) for y in labels], labels


def to_tensor(samples: list) -> torch.Tensor:
    """ImageNet-normalised float ``[N, 3, S, S]`` of the images of ``samples``."""
    x = torch.from_numpy(np.stack([im for im, _ in samples])).permute(0, 3, 1, 2).float() / 255
    return (x - MEAN) / STD


class ToyPretrainSet(torch.utils.data.Dataset):
    """Unlabelled two-view items (``view_a, view_b, mask_a, mask_b, index``) of ``samples``,
    with the ground-truth object/background map as the region map (no ``label`` key)."""

    def __init__(self, samples: list, image_size: int, **transform_kwargs):
        self.samples = samples
        self.transform = TwoViewTransform(image_size, **transform_kwargs)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image, labels = self.samples[i]
        item = self.transform(Image.fromarray(image), labels)
        item["index"] = i
        return item
