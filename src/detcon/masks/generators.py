"""Region-map generators: one interface, several unsupervised heuristics.

Every generator is a callable ``gen(image) -> label_map`` with

* ``image``: ``uint8`` ndarray ``[H, W, 3]`` (RGB),
* ``label_map``: ``int32`` ndarray ``[H, W]`` with ids ``0..n-1``, all present (contiguous),

plus two attributes used in the mask-cache key: ``name`` (str) and ``params`` (dict of
JSON-serialisable values). Two generators with equal ``name`` and ``params`` must produce
the same map for the same image.

``build_generator("fh:scale=500,min_size=200")`` turns a short spec into a generator:
``fh``, ``grid``, ``whole``, scikit-image's ``slic``, ``quickshift`` and compact ``watershed``,
or a function of the user's named by import path (``mypkg.regions:make_regions``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "MaskGenerator",
    "FHGenerator",
    "GridGenerator",
    "WholeImageGenerator",
    "CallableGenerator",
    "SLICGenerator",
    "QuickshiftGenerator",
    "WatershedGenerator",
    "ImportedGenerator",
    "GENERATORS",
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
            Image.fromarray(image).resize((sw, sh), Image.Resampling.BILINEAR, reducing_gap=None)
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


def _check_params(name: str, **rules) -> None:
    """``rules``: ``param=(value, ok)``; raises one ValueError naming every bad one."""
    bad = [f"{k}={v!r}" for k, (v, ok) in rules.items() if not ok]
    if bad:
        raise ValueError(f"invalid {name} params: {', '.join(bad)}")


class SLICGenerator(MaskGenerator):
    """SLIC superpixels (``skimage.segmentation.slic``): k-means in (Lab colour, x, y).

    ``n_segments`` is the approximate number of regions, ``compactness`` trades colour
    similarity (low) against square, grid-like regions (high; 10 is scikit-image's default for
    Lab images), ``sigma`` the Gaussian pre-smoothing (pixels), ``max_num_iter`` the k-means
    iterations. Regions are made connected (``enforce_connectivity``). Deterministic.
    """

    name = "slic"

    def __init__(
        self,
        n_segments: int = 100,
        compactness: float = 10.0,
        sigma: float = 1.0,
        max_num_iter: int = 10,
    ):
        _check_params(
            "slic",
            n_segments=(n_segments, isinstance(n_segments, int) and n_segments >= 1),
            compactness=(compactness, compactness > 0),
            sigma=(sigma, sigma >= 0),
            max_num_iter=(max_num_iter, isinstance(max_num_iter, int) and max_num_iter >= 1),
        )
        self.params = {
            "n_segments": int(n_segments),
            "compactness": float(compactness),
            "sigma": float(sigma),
            "max_num_iter": int(max_num_iter),
        }

    def _generate(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import slic

        if min(image.shape[:2]) < 2:  # slic needs a 2-D grid of pixels
            return np.zeros(image.shape[:2], dtype=np.int32)
        return slic(image, start_label=0, channel_axis=-1, **self.params)


class QuickshiftGenerator(MaskGenerator):
    """Quickshift mode seeking (``skimage.segmentation.quickshift``) in (Lab colour, x, y).

    ``kernel_size`` is the width of the density kernel (pixels; larger: fewer, bigger regions),
    ``max_dist`` the cut-off distance of the tree links (larger: fewer regions), ``ratio`` the
    weight of colour against position (0..1), ``sigma`` the pre-smoothing. Ties are broken with
    a fixed ``seed``, so the maps are deterministic. Defaults (``max_dist`` 40 rather than
    scikit-image's 10) give tens to about a hundred regions on photographs of 0.1-0.3 Mpx
    instead of hundreds. Slower than SLIC or FH (its cost grows with ``kernel_size**2``).
    """

    name = "quickshift"

    def __init__(
        self,
        kernel_size: float = 5.0,
        max_dist: float = 40.0,
        ratio: float = 0.5,
        sigma: float = 0.0,
        seed: int = 42,
    ):
        _check_params(
            "quickshift",
            kernel_size=(kernel_size, kernel_size > 0),
            max_dist=(max_dist, max_dist > 0),
            ratio=(ratio, 0 <= ratio <= 1),
            sigma=(sigma, sigma >= 0),
            seed=(seed, isinstance(seed, int)),
        )
        self.params = {
            "kernel_size": float(kernel_size),
            "max_dist": float(max_dist),
            "ratio": float(ratio),
            "sigma": float(sigma),
            "seed": int(seed),
        }

    def _generate(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import quickshift

        p = self.params
        return quickshift(
            image,
            ratio=p["ratio"],
            kernel_size=p["kernel_size"],
            max_dist=p["max_dist"],
            sigma=p["sigma"],
            convert2lab=True,
            rng=p["seed"],
            channel_axis=-1,
        )


class WatershedGenerator(MaskGenerator):
    """Compact watershed (``skimage.segmentation.watershed``) on the Sobel gradient of the
    grey image, flooded from ``markers`` seeds that scikit-image spreads on a regular grid.

    ``compactness`` > 0 makes the basins grow evenly from their seeds (compact watershed,
    Neubert & Protzel 2014): 0 is the classic watershed, larger values give more regular,
    superpixel-like regions; the gradient is in [0, 1] units, so useful values are small
    (1e-4 .. 1e-2). Deterministic.
    """

    name = "watershed"

    def __init__(self, markers: int = 100, compactness: float = 0.001):
        _check_params(
            "watershed",
            markers=(markers, isinstance(markers, int) and markers >= 1),
            compactness=(compactness, compactness >= 0),
        )
        self.params = {"markers": int(markers), "compactness": float(compactness)}

    def _generate(self, image: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2gray
        from skimage.filters import sobel
        from skimage.segmentation import watershed

        if min(image.shape[:2]) < 2:
            return np.zeros(image.shape[:2], dtype=np.int32)
        gradient = sobel(rgb2gray(image))
        markers = min(self.params["markers"], image.shape[0] * image.shape[1])
        return watershed(gradient, markers=markers, compactness=self.params["compactness"])


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _import(path: str) -> Callable:
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"mask generator {path!r}: cannot import {module_name!r}: {err}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"mask generator {path!r}: {module_name} has no {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"mask generator {path!r} is not callable")
    return obj


class ImportedGenerator(CallableGenerator):
    """A function of the user's, named by import path: ``"mypkg.regions:make_regions"``.

    The function is called as ``fn(image, **params)`` with ``image`` ``uint8 [H, W, 3]`` and
    must return integer labels ``[H, W]`` (any values; they are made contiguous). ``name`` is
    the import path and ``params`` the keyword arguments, so both key the mask cache: a cache
    made with one function or one set of parameters is never read for another. The function is
    not hashed: when you change what it computes, change its name or a parameter (e.g. a
    ``version=2`` keyword it accepts), or write to a new cache. Pickled by path, so it works
    in DataLoader and ``detcon masks`` worker processes (the module must be importable there).
    """

    def __init__(self, path: str, **params):
        if not _IMPORT_PATH.fullmatch(path):
            raise ValueError(
                f"mask generator import path must look like module.sub:function, got {path!r}"
            )
        fn = _import(path)
        super().__init__(fn, path, params)
        self.params = dict(params)

    def _generate(self, image: np.ndarray) -> np.ndarray:
        labels = np.asarray(self.fn(image, **self.params))
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{self.name}: must return integer labels [H, W], got {labels.dtype} {labels.shape}"
            )
        return labels.astype(np.int64)

    def __reduce__(self):
        return (_rebuild_imported, (self.name, self.params))

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"ImportedGenerator({self.name!r}{args})"


def _rebuild_imported(path: str, params: dict) -> ImportedGenerator:
    return ImportedGenerator(path, **params)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    return text


#: Generators by spec name (``coco`` is built by :class:`detcon.masks.coco.CocoMasks`).
GENERATORS = {
    "fh": FHGenerator,
    "grid": GridGenerator,
    "whole": WholeImageGenerator,
    "slic": SLICGenerator,
    "quickshift": QuickshiftGenerator,
    "watershed": WatershedGenerator,
}
_BUILDERS = GENERATORS


def is_generator_spec(spec: str) -> bool:
    """Whether a string names a generator :func:`build_generator` knows (a built-in name, with
    or without ``:params``, or an import path ``module:function[:params]``); no import."""
    name = spec.strip().partition(":")[0]
    return name in GENERATORS or _split_import(spec.strip()) is not None


def _split_import(spec: str) -> tuple[str, str] | None:
    """``"pkg.mod:fn:a=1"`` -> ``("pkg.mod:fn", "a=1")``; None when not an import path."""
    module, sep, rest = spec.partition(":")
    fn, _, params = rest.partition(":")
    path = f"{module}:{fn}"
    return (path, params) if sep and _IMPORT_PATH.fullmatch(path) else None


def _parse_params(text: str, spec: str, name: str) -> dict:
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            if name == "grid" and part.isdigit():
                kwargs["rows"] = int(part)
                continue
            raise ValueError(f"bad generator spec {spec!r}: expected key=value, got {part!r}")
        key, value = part.split("=", 1)
        kwargs[key.strip()] = _parse_value(value.strip())
    return kwargs


def build_generator(spec: str | dict | MaskGenerator) -> MaskGenerator:
    """Build a generator from a spec.

    * ``"fh"``, ``"grid"``, ``"whole"``, ``"slic"``, ``"quickshift"``, ``"watershed"``:
      defaults;
    * ``"fh:scale=500,min_size=200,max_side=512"``, ``"grid:rows=2,cols=3"`` (``grid:4``
      means 4x4), ``"slic:n_segments=64,compactness=10"``,
      ``"watershed:markers=64,compactness=0.001"``, ``"quickshift:kernel_size=3,max_dist=6"``;
    * ``"mypkg.regions:make_regions"`` or ``"mypkg.regions:make_regions:k=8"``: a function
      by import path, called as ``fn(image, k=8)`` (:class:`ImportedGenerator`);
    * ``{"name": "fh", "scale": 500}``, ``{"name": "mypkg.regions:make_regions", "k": 8}``;
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
        spec = spec.strip()
        name, _, rest = spec.partition(":")
        if name not in GENERATORS and (split := _split_import(spec)) is not None:
            name, rest = split
        kwargs = _parse_params(rest, spec, name)
    else:
        raise TypeError(f"generator spec must be str, dict or MaskGenerator, got {type(spec)}")
    if isinstance(name, str) and name not in GENERATORS and _IMPORT_PATH.fullmatch(name):
        return ImportedGenerator(name, **kwargs)
    if name not in GENERATORS:
        raise ValueError(
            f"unknown mask generator {name!r}; choose one of {sorted(GENERATORS)} or a function "
            "by import path (module.sub:function); coco ground truth needs the instances JSON "
            "(detcon.masks.coco.CocoMasks)"
        )
    try:
        return GENERATORS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad parameters for generator {name!r}: {err}") from None


def num_segments(labels: np.ndarray) -> int:
    """Number of ids in a contiguous label map."""
    return int(labels.max()) + 1 if labels.size else 0


def scaled_min_size(min_size: int, full_hw: tuple[int, int], small_hw: tuple[int, int]) -> int:
    """``min_size`` scaled by area ratio (used by ``FHGenerator(max_side=...)``)."""
    return max(1, round(min_size * (small_hw[0] * small_hw[1]) / math.prod(full_hw)))
