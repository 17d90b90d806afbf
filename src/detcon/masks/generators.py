"""Region-map generators: one interface, several unsupervised heuristics.

Every generator is a callable ``gen(image) -> label_map`` with

* ``image``: ``uint8`` ndarray ``[H, W, 3]`` (RGB),
* ``label_map``: ``int32`` ndarray ``[H, W]`` with ids ``0..n-1``, all present (contiguous),

plus two attributes used in the mask-cache key: ``name`` (str) and ``params`` (dict of
JSON-serialisable values). Two generators with equal ``name`` and ``params`` must produce
the same map for the same image.

``build_generator("fh:scale=500,min_size=200")`` turns a short spec into a generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "MaskGenerator",
    "FHGenerator",
    "GridGenerator",
    "WholeImageGenerator",
    "CallableGenerator",
    "build_generator",
    "relabel_contiguous",
    "check_image",
]


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a generator input: ``uint8 [H, W, 3]`` with H, W >= 1. Returns it unchanged."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an RGB image of shape [H, W, 3], got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {image.dtype}")
    return image


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer labels ``[H, W]`` to int32 ids ``0..n-1`` in order of first value.

    Ids are assigned by sorted label value (``np.unique``), so the result is deterministic.
    """
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


class MaskGenerator:
    """Base class: subclasses implement ``_generate`` and set ``name`` and ``params``."""

    name: str = "base"
    params: dict[str, Any] = {}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = check_image(image)
        labels = self._generate(image)
        if labels.shape != image.shape[:2]:
            raise RuntimeError(
                f"{self.name}: label map shape {labels.shape} != image shape {image.shape[:2]}"
            )
        return _ensure(labels)

    def _generate(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _ensure(labels: np.ndarray) -> np.ndarray:
    """int32 labels, relabelled only if they are not already ``0..n-1`` (fast path: a
    bincount instead of a sort, which matters on 12-megapixel maps)."""
    if labels.size and labels.min() == 0:
        n = int(labels.max()) + 1
        if n <= labels.size and np.bincount(labels.ravel(), minlength=n).all():
            return labels.astype(np.int32, copy=False)
    return relabel_contiguous(labels)


class FHGenerator(MaskGenerator):
    """Felzenszwalb-Huttenlocher graph segmentation (``skimage.segmentation.felzenszwalb``).

    Defaults reproduce the official DetCon masks (docs/official.md §1): ``scale=1000``,
    ``sigma=0.8``, ``min_size=1000`` at the image's full resolution.

    ``max_side`` (deviation, off by default): when the longer side exceeds ``max_side`` the
    image is first resized (bilinear, antialiased) so that its longer side equals ``max_side``;
    FH runs there with ``min_size`` scaled by the area ratio (so the minimum segment covers
    the same fraction of the image) and ``scale`` kept as is (scale is a threshold on edge
    weights, which are colour differences and do not change with resolution); the labels are
    then upsampled back to full resolution with nearest neighbour. Much faster on large
    photographs, at the price of slightly blockier boundaries.

    ``kernel``: ``"fast"`` (default) runs :func:`detcon.masks.fh_fast.felzenszwalb_fast`,
    whose label maps are identical to scikit-image's (same preprocessing, edge order, sort and
    merges; 3x its speed on one core, less memory) and which falls back to scikit-image when
    numba is missing; ``"skimage"`` calls scikit-image. The output does not depend on it, so it
    is not part of ``params`` (nor of a cache's key).
    """

    name = "fh"

    def __init__(
        self,
        scale: float = 1000.0,
        sigma: float = 0.8,
        min_size: int = 1000,
        max_side: int | None = None,
        kernel: str = "fast",
    ):
        if kernel not in ("fast", "skimage"):
            raise ValueError(f"FH kernel must be 'fast' or 'skimage', got {kernel!r}")
        self.kernel = kernel
        if scale <= 0 or sigma < 0 or min_size < 0:
            raise ValueError(f"invalid FH params scale={scale} sigma={sigma} min_size={min_size}")
        if max_side is not None and max_side < 8:
            raise ValueError(f"max_side must be >= 8 or None, got {max_side}")
        self.scale, self.sigma, self.min_size, self.max_side = scale, sigma, min_size, max_side
        self.params = {"scale": float(scale), "sigma": float(sigma), "min_size": int(min_size)}
        if max_side is not None:
            self.params["max_side"] = int(max_side)

    def _generate(self, image: np.ndarray) -> np.ndarray:
        if self.kernel == "fast":
            from detcon.masks.fh_fast import felzenszwalb_fast as felzenszwalb
        else:
            from skimage.segmentation import felzenszwalb

        h, w = image.shape[:2]
        if self.max_side is None or max(h, w) <= self.max_side:
            return felzenszwalb(image, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        from PIL import Image

        ratio = self.max_side / max(h, w)
        sh, sw = max(1, round(h * ratio)), max(1, round(w * ratio))
        small = np.asarray(
            Image.fromarray(image).resize((sw, sh), Image.BILINEAR, reducing_gap=None)
        )
        # min_size is an area in pixels: scale it with the area ratio.
        min_size = scaled_min_size(self.min_size, (h, w), (sh, sw))
        labels = felzenszwalb(small, scale=self.scale, sigma=self.sigma, min_size=min_size)
        labels = labels.astype(np.int32)  # ids 0..n-1 already; int32 halves the upsample cost
        # Nearest upsampling by index arithmetic (exact, no interpolation of ids).
        rows = np.minimum((np.arange(h) * sh) // h, sh - 1)
        cols = np.minimum((np.arange(w) * sw) // w, sw - 1)
        return labels[rows[:, None], cols[None, :]]


class GridGenerator(MaskGenerator):
    """The paper's spatial heuristic: a ``rows x cols`` grid of equal rectangles (default 4x4).

    The DetCon paper (section 3.2, "spatial heuristic") divides the image into a grid of
    non-overlapping rectangular sub-regions; 4x4 = 16 regions matches the 16 masks sampled
    per view (our reading of the paper, not checked against the PDF). Cell ``(i, j)`` gets
    id ``i * cols + j``; on images smaller than the grid some cells are empty and the ids are
    made contiguous.
    """

    name = "grid"

    def __init__(self, rows: int = 4, cols: int | None = None):
        cols = rows if cols is None else cols
        if rows < 1 or cols < 1:
            raise ValueError(f"grid needs rows, cols >= 1, got {rows}x{cols}")
        self.rows, self.cols = int(rows), int(cols)
        self.params = {"rows": self.rows, "cols": self.cols}

    def _generate(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        r = (np.arange(h) * self.rows) // h  # row band of each pixel row
        c = (np.arange(w) * self.cols) // w
        return (r[:, None] * self.cols + c[None, :]).astype(np.int64)


class WholeImageGenerator(MaskGenerator):
    """One region covering the whole image (all zeros): turns DetCon into BYOL / SimCLR."""

    name = "whole"

    def __init__(self):
        self.params = {}

    def _generate(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(image.shape[:2], dtype=np.int32)


class CallableGenerator(MaskGenerator):
    """Wrap any ``fn(image uint8 [H,W,3]) -> integer labels [H,W]`` (e.g. SLIC).

    ``name`` and ``params`` identify the function in the cache key: change them whenever
    the function's behaviour changes. Output labels are relabelled to contiguous int32.
    """

    def __init__(
        self, fn: Callable[[np.ndarray], np.ndarray], name: str, params: dict | None = None
    ):
        if not callable(fn):
            raise TypeError("fn must be callable")
        self.fn, self.name, self.params = fn, str(name), dict(params or {})

    def _generate(self, image: np.ndarray) -> np.ndarray:
        labels = np.asarray(self.fn(image))
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{self.name}: callable must return integer labels [H, W], got "
                f"{labels.dtype} {labels.shape}"
            )
        return labels.astype(np.int64)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("none", "null"):
        return None
    return text


_BUILDERS = {"fh": FHGenerator, "grid": GridGenerator, "whole": WholeImageGenerator}


def build_generator(spec: str | dict | MaskGenerator) -> MaskGenerator:
    """Build a generator from a spec.

    * ``"fh"``, ``"grid"``, ``"whole"``: defaults;
    * ``"fh:scale=500,min_size=200,max_side=512"``, ``"grid:rows=2,cols=3"`` (``grid:4``
      means 4x4);
    * ``{"name": "fh", "scale": 500}``;
    * a generator instance is returned unchanged.

    COCO ground truth is not built here (it needs the annotation file): see
    :class:`detcon.masks.coco.CocoMasks`.
    """
    if isinstance(spec, MaskGenerator):
        return spec
    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
    elif isinstance(spec, str):
        name, _, rest = spec.strip().partition(":")
        kwargs = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            if "=" not in part:
                if name == "grid" and part.isdigit():
                    kwargs["rows"] = int(part)
                    continue
                raise ValueError(f"bad generator spec {spec!r}: expected key=value, got {part!r}")
            key, value = part.split("=", 1)
            kwargs[key.strip()] = _parse_value(value.strip())
    else:
        raise TypeError(f"generator spec must be str, dict or MaskGenerator, got {type(spec)}")
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown mask generator {name!r}; choose one of {sorted(_BUILDERS)} (coco ground "
            "truth needs the instances JSON: detcon.masks.coco.CocoMasks)"
        )
    try:
        return _BUILDERS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad parameters for generator {name!r}: {err}") from None


def num_segments(labels: np.ndarray) -> int:
    """Number of ids in a contiguous label map."""
    return int(labels.max()) + 1 if labels.size else 0


def scaled_min_size(min_size: int, full_hw: tuple[int, int], small_hw: tuple[int, int]) -> int:
    """``min_size`` scaled by area ratio (used by ``FHGenerator(max_side=...)``)."""
    return max(1, round(min_size * (small_hw[0] * small_hw[1]) / math.prod(full_hw)))
