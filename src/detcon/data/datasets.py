"""Pretraining datasets: images + region maps -> two augmented views with their masks.

Every item is ``{"view_a": float[3,S,S], "view_b": float[3,S,S], "mask_a": int64[S,S],
"mask_b": int64[S,S], "index": int}`` plus ``"label": int`` for class-tree datasets
(docs/architecture.md, "Data items").

Region maps come from a :class:`~detcon.masks.cache.MaskCache` (offline, fast) or from a
generator run on the fly inside the loader workers (each worker memoises the last
``memo_size`` maps, so small datasets pay the cost once per worker).

Bad files: folders are scanned by file name only (no decode at scan time, so ImageNet-size
folders list in seconds). A file that fails to decode at load time is **replaced by the next
index** with a one-time warning naming the file and the reason; after 50 consecutive failures
(or when no file of a smaller list can be read) the dataset raises
:class:`UnreadableImagesError` (the folder is probably wrong). A folder without any image file
raises :class:`NoImagesError`. Both are ``FileNotFoundError`` s, which the command line reports
in one line with exit status 2.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from detcon.masks.source import SOURCE_NAMES as MASK_SOURCES

from .decode import IMAGE_EXTENSIONS, DecodeError, load_image
from .transforms import TwoViewTransform

__all__ = [
    "scan_images",
    "ImageListDataset",
    "ImageFolderDataset",
    "ImageClassTreeDataset",
    "CocoDataset",
    "SyntheticDataset",
    "resolve_masks",
    "ImageDataError",
    "NoImagesError",
    "UnreadableImagesError",
    "MASK_SOURCES",
]

_MAX_CONSECUTIVE_FAILURES = 50

#: Names ``masks`` may take besides a cache folder (``coco`` needs the instances JSON).


class ImageDataError(FileNotFoundError):
    """The images to train on are missing or unusable: a one-line message naming the folder.

    A ``FileNotFoundError`` so that the command line reports it as a user error (one line,
    exit status 2). ``str()`` stays one line even when a DataLoader worker re-raises it with
    the worker's traceback folded into the message."""

    def __str__(self) -> str:
        text = super().__str__()
        if "Traceback (most recent call last)" not in text:
            return text
        last = [line for line in text.splitlines() if line.strip()][-1]
        name = type(self).__name__
        return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last


class NoImagesError(ImageDataError):
    """A folder holds no file with an image extension."""


class UnreadableImagesError(ImageDataError, RuntimeError):
    """No readable image among the files tried (also a ``RuntimeError``, as before)."""


def _extensions() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def no_images_error(root) -> NoImagesError:
    """The error for a folder without images: names the folder and the extensions."""
    return NoImagesError(
        f"no images in {root} (searched recursively for {_extensions()}, any case)"
    )


def scan_images(root: str | os.PathLike, skipped: list | None = None) -> list[Path]:
    """All image files under ``root`` (recursive, common extensions), in sorted order.

    Entries named like images that are not readable files (a dangling symlink, a folder called
    ``x.jpg``) are left out; with ``skipped`` (a list) each is appended as ``(path, reason)``,
    the form of :attr:`detcon.commands.masks.MaskRunStats.skipped`. Hidden files (``.name``)
    are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files, odd = [], []
    for p in root.rglob("*"):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or p.name.startswith("."):
            continue
        if p.is_file():
            files.append(p)
        elif p.is_symlink() and not p.exists():
            odd.append((p, "dangling symlink"))
        elif p.is_dir():
            odd.append((p, "not a file: a folder named like an image"))
        else:
            odd.append((p, "not a regular file"))

    def order(p: Path) -> str:
        return p.relative_to(root).as_posix()

    if skipped is not None:
        skipped.extend((str(p), why) for p, why in sorted(odd, key=lambda e: order(e[0])))
    return sorted(files, key=order)


def resolve_masks(masks: Any, data_root=None):
    """Turn ``masks`` into ``(cache | None, generator | None)``.

    ``masks``: a ``MaskCache``, a generator (callable with ``name``/``params``), a generator
    dict, ``None`` (= whole image) or a text parsed by
    :func:`detcon.masks.source.parse_mask_source` (a cache folder or a generator spec). With a
    cache, the generator is rebuilt from the cache's recorded params so a missing or stale
    entry is recomputed on the fly instead of failing.
    """
    from detcon.masks.cache import MaskCache, open_cache
    from detcon.masks.generators import build_generator
    from detcon.masks.source import CacheFolder, GroundTruth, parse_mask_source

    if isinstance(masks, MaskCache):
        cache = masks
    elif masks is None or isinstance(masks, (str, os.PathLike)):
        source = parse_mask_source(masks)
        if isinstance(source, GroundTruth):
            raise ValueError(
                "masks 'coco' (ground truth) needs the COCO instances JSON "
                "(data.coco_json / coco_json=)"
            )
        if not isinstance(source, CacheFolder):
            return None, source.build()
        cache = open_cache(source.root, data_root=data_root)
    elif isinstance(masks, dict):
        return None, build_generator(masks)
    elif callable(masks):
        return None, masks
    else:
        raise TypeError(
            f"masks must be a MaskCache, generator, spec or cache folder, got {masks!r}"
        )
    try:
        gen = build_generator({"name": cache.name, **cache.params})
    except ValueError:
        gen = None  # e.g. coco: no on-the-fly fallback
    return cache, gen


class MaskCoverageError(FileNotFoundError):
    """A mask cache lacks entries for some images of the dataset (one line)."""


def check_coverage(cache, files) -> None:
    """Raise :class:`MaskCoverageError` when some ``files`` have no entry in ``cache``."""
    missing = [f for f in files if not cache.path(f).is_file()]
    if missing:
        raise MaskCoverageError(
            f"mask cache {cache.root} has no entry for {len(missing)} of {len(files)} images "
            f"(e.g. {missing[0]}): built for another folder? Run `detcon masks` on this folder "
            "into the cache, or pass masks.compute_missing=true to compute them during training"
        )


class ImageListDataset(Dataset):
    """Two-view dataset over an explicit list of image files.

    Args:
        files: image paths.
        masks: see :func:`resolve_masks`.
        transform: a :class:`TwoViewTransform` (default: official recipe at ``image_size``).
        labels: optional int label per file (adds ``"label"`` to items).
        repeat: the list is seen ``repeat`` times per epoch (tiny datasets).
        memo_size: region maps memoised per worker when generated on the fly.
        data_root: key root for a cache folder given by path.
        compute_missing: with a cache, images without an entry get their map computed on
            the fly (with a warning); False checks coverage up front and raises
            :class:`MaskCoverageError` if any image lacks an entry (pretraining's default).
    """

    def __init__(
        self,
        files,
        masks: Any = "fh",
        transform: TwoViewTransform | None = None,
        labels: list[int] | None = None,
        image_size: int = 224,
        repeat: int = 1,
        memo_size: int = 256,
        data_root=None,
        compute_missing: bool = True,
    ):
        self.files = [Path(f) for f in files]
        if not self.files:
            if data_root is not None:
                raise no_images_error(data_root)
            raise ValueError("no images to load (empty file list)")
        if labels is not None and len(labels) != len(self.files):
            raise ValueError(f"{len(labels)} labels for {len(self.files)} files")
        self.labels = labels
        self.cache, self.generator = resolve_masks(masks, data_root)
        if self.cache is not None and not compute_missing:
            check_coverage(self.cache, self.files)
        self.transform = transform or TwoViewTransform(image_size)
        self.repeat = int(repeat)
        self.memo_size = memo_size
        self._memo: OrderedDict = OrderedDict()
        self._warned: set = set()

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def region_map(self, i: int, image: Image.Image) -> np.ndarray:
        """Region map ``int [H, W]`` of file ``i`` (cache, memo, or generated now)."""
        path = self.files[i]
        size = (image.height, image.width)
        if self.cache is not None:
            labels = self.cache.get(path, dtype=None)  # stored dtype, ids exact; cast after crop
            if labels is not None and labels.shape == size:
                return labels
        if i in self._memo:
            self._memo.move_to_end(i)
            return self._memo[i]
        if self.generator is None:
            raise RuntimeError(f"{path}: no valid cached mask and no generator to compute one")
        if self.cache is not None and ("miss", path) not in self._warned:
            self._warned.add(("miss", path))
            warnings.warn(f"{path}: mask missing or stale in cache, computing it", stacklevel=2)
        labels = self.generator(np.asarray(image, dtype=np.uint8))
        stored = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int32)
        self._memo[i] = stored
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return stored

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """Decoded image and region map of file ``i`` (raises ``DecodeError``)."""
        image = load_image(self.files[i])
        return image, self.region_map(i, image)

    def __getitem__(self, index: int) -> dict:
        n = len(self.files)
        i = index % n
        tries = min(n, _MAX_CONSECUTIVE_FAILURES)
        for _ in range(tries):
            try:
                image, labels = self.load(i)
                break
            except DecodeError as err:
                last = err
                if self.files[i] not in self._warned:
                    self._warned.add(self.files[i])
                    warnings.warn(f"skipping unreadable image: {err}", stacklevel=2)
                i = (i + 1) % n
        else:
            raise self._unreadable(tries, index, last)
        item = self.transform(image, labels)
        item["index"] = i
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item

    def _unreadable(self, tries: int, index: int, last: Exception) -> UnreadableImagesError:
        where = getattr(self, "root", None) or self.files[index % len(self.files)].parent
        if tries == len(self.files):
            what = f"none of the {tries} image files in {where} can be read"
        else:
            what = f"{tries} consecutive unreadable image files in {where} from item {index}"
        return UnreadableImagesError(
            f"{what} (last: {last}); is this the right folder? Images are files ending in "
            f"{_extensions()}"
        )


def _warn_skipped(root, skipped: list) -> None:
    if skipped:
        shown = "; ".join(f"{p}: {why}" for p, why in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        warnings.warn(f"{root}: skipped {len(skipped)} entries: {shown}{more}", stacklevel=3)


class ImageFolderDataset(ImageListDataset):
    """All images under ``root`` (recursive, sorted). Cache keys are relative to ``root``.
    ``skipped`` lists the ``(path, reason)`` of entries named like images that are not files
    (see :func:`scan_images`); they are also reported in one warning. ``select(files,
    labels) -> indices`` keeps part of the folder (:func:`detcon.data.subsets.select_indices`)."""

    def __init__(self, root, masks: Any = "fh", transform=None, select=None, **kwargs):
        self.root = Path(root)
        kwargs.setdefault("data_root", self.root)
        self.skipped: list[tuple[str, str]] = []
        files = scan_images(root, self.skipped)
        _warn_skipped(self.root, self.skipped)
        if not files:
            raise no_images_error(self.root)
        if select is not None:
            files = [files[i] for i in select(files, None)]
        super().__init__(files, masks, transform, **kwargs)


class ImageClassTreeDataset(ImageListDataset):
    """ImageFolder-style tree ``root/<class>/**/<image>``: items also carry ``"label"``.

    ``classes`` (sorted sub-folder names) and ``class_to_idx`` as in torchvision. With
    ``select(files, labels) -> indices`` only those images are kept, and ``classes`` only
    the classes that still have images (labels renumbered in the same sorted order).
    """

    def __init__(self, root, masks: Any = "fh", transform=None, select=None, **kwargs):
        self.root = Path(root)
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise ValueError(f"{root}: no class sub-folders")
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
        files, labels = [], []
        self.skipped: list[tuple[str, str]] = []
        for c in self.classes:
            found = scan_images(self.root / c, self.skipped)
            files += found
            labels += [self.class_to_idx[c]] * len(found)
        _warn_skipped(self.root, self.skipped)
        if not files:
            raise no_images_error(self.root)
        if select is not None:
            keep = select(files, labels)
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
            self.classes = [c for k, c in enumerate(self.classes) if k in set(labels)]
            self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
            new = {old: k for k, old in enumerate(sorted(set(labels)))}
            labels = [new[label] for label in labels]
        kwargs.setdefault("data_root", self.root)
        super().__init__(files, masks, transform, labels=labels, **kwargs)


class CocoDataset(ImageListDataset):
    """COCO images with ground-truth instance maps (``masks="coco"``) or any other masks."""

    def __init__(self, images_dir, instances_json, masks: Any = "coco", transform=None, **kwargs):
        from detcon.masks.coco import CocoMasks

        self.images_dir = Path(images_dir)
        self.coco_masks = CocoMasks(instances_json)
        files = [self.images_dir / f for f in self.coco_masks.file_names]
        missing = [f for f in files if not f.is_file()]
        if missing:
            warnings.warn(
                f"{len(missing)} annotated images missing under {images_dir}", stacklevel=2
            )
            files = [f for f in files if f.is_file()]
        kwargs.setdefault("data_root", self.images_dir)
        self.ground_truth = isinstance(masks, str) and masks == "coco"
        super().__init__(files, "whole" if self.ground_truth else masks, transform, **kwargs)

    def region_map(self, i: int, image: Image.Image) -> np.ndarray:
        if not self.ground_truth:
            return super().region_map(i, image)
        labels = self.coco_masks.labels(self.files[i].name)
        if labels.shape != (image.height, image.width):
            raise DecodeError(f"{self.files[i]}: annotation size {labels.shape} != image size")
        return labels


class SyntheticDataset(Dataset):
    """Random blocky images and region maps for tests and smoke runs (no files needed).

    Item ``i`` is deterministic given ``seed``: a ``size x size`` map made of 2-12 random
    rectangles painted over a background (id 0), relabelled to contiguous ids, and an image
    whose colour is a noisy per-region colour. Items pass through ``transform`` like real ones.
    """

    def __init__(self, n: int = 64, size: int = 64, seed: int = 0, transform=None, image_size=None):
        if n < 1 or size < 2:
            raise ValueError(f"need n >= 1 and size >= 2, got n={n} size={size}")
        self.n, self.size, self.seed = n, size, seed
        self.transform = transform or TwoViewTransform(image_size or size)

    def __len__(self) -> int:
        return self.n

    def sample(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The raw ``(image PIL RGB, region map int32 [size, size])`` of item ``index``."""
        from detcon.masks.generators import relabel_contiguous

        rng = np.random.default_rng([self.seed, index])
        s = self.size
        labels = np.zeros((s, s), dtype=np.int32)
        for k in range(1, int(rng.integers(2, 13))):
            y0, x0 = rng.integers(0, s - 1, size=2)
            y1, x1 = y0 + rng.integers(1, s - y0 + 1), x0 + rng.integers(1, s - x0 + 1)
            labels[y0:y1, x0:x1] = k
        labels = relabel_contiguous(labels)
        colours = rng.integers(0, 256, size=(int(labels.max()) + 1, 3))
        noise = rng.normal(0, 8, size=(s, s, 3))
        image = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(image), labels

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(index)
        image, labels = self.sample(index)
        item = self.transform(image, labels)
        item["index"] = index
        return item


def collate(items: list[dict]) -> dict:
    """Stack a list of items into a batch (the default collate does the same; explicit here)."""
    return {
        k: torch.stack([it[k] for it in items])
        if torch.is_tensor(items[0][k])
        else torch.tensor([it[k] for it in items])
        for k in items[0]
    }
