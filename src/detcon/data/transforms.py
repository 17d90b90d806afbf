"""Paired two-view augmentations: geometry on (image, mask) together, photometry on the image only.

Recipe (detcon-official.md sections 2-3, BYOL's asymmetric views), per view independently:

1. crop window: ``crop="official"``: area ~ U(0.08, 1)·H·W, ratio = exp(U(log 3/4, log 4/3)),
   ``w = round(sqrt(area·ratio))``, ``h = round(sqrt(area/ratio))`` **clipped** to the image,
   uniform integer offsets, no rejection loop. ``crop="torchvision"``: RandomResizedCrop's
   10-trial rejection sampler with a centre-crop fallback (deviation, option);
2. horizontal flip with p=0.5, one coin for image and mask;
3. resize to ``image_size``: bicubic for the image, **nearest** for the mask. ``antialias=False``
   (default, official ``tf.image.resize(..., BICUBIC)``): no low-pass filter before a downscale,
   computed in float32 and clipped to [0, 255] without rounding; ``antialias=True`` (a
   deviation): torch's antialiased uint8 bicubic, smoother on every downscaling crop;
4. image only: colour jitter p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 in
   random order), grayscale p=0.2, Gaussian blur p=1.0 (view a) / 0.1 (view b) with sigma
   U(0.1, 2.0) and a ``2·int(S/20)+1``-tap kernel (23 at 224, like dm_pix's radius 11),
   solarize p=0.0 / 0.2 at threshold 0.5; then ImageNet mean/std normalisation.

Step 4 has two implementations, chosen by ``photometric``:

* ``"official"``: the official dm_pix semantics in float32 (:mod:`detcon.data.photometric`):
  additive brightness, contrast around the per-channel mean, HSV saturation and hue, a clip to
  [0, 1] after every op, blur with zero ('SAME') padding, randomness from ``generator``;
* ``"torchvision"`` (current default, a deviation): torchvision v2 ops on uint8 (brightness,
  contrast and saturation are multiplicative factors in [1-x, 1+x]; contrast around the gray
  mean, saturation blended with grayscale; reflect-padded blur; global RNG only).

Masks stay ``int64`` (no uint8 wrap) and are never touched by photometric ops.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .photometric import OfficialPhotometric

__all__ = [
    "TwoViewTransform",
    "official_crop_box",
    "torchvision_crop_box",
    "paired_geometry",
    "resize_bicubic_tf",
    "PHOTOMETRIC_MODES",
    "DEFAULT_PHOTOMETRIC",
]

#: Colour pipelines of TwoViewTransform: "official" (dm_pix semantics, the official recipe),
#: "torchvision" (torchvision v2 semantics, a deviation) and "none" (no colour ops).
PHOTOMETRIC_MODES = ("official", "torchvision", "none")
#: Mode used by ``photometric=True`` and by default: the official recipe.
DEFAULT_PHOTOMETRIC = "official"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def official_crop_box(
    height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None
) -> tuple[int, int, int, int]:
    """Official DetCon crop window ``(top, left, h, w)``: rounded, clipped, no rejection."""
    area = _uniform(*scale, generator) * height * width
    aspect = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), generator))
    w = min(max(1, round(math.sqrt(area * aspect))), width)
    h = min(max(1, round(math.sqrt(area / aspect))), height)
    top = int(torch.randint(0, height - h + 1, (), generator=generator))
    left = int(torch.randint(0, width - w + 1, (), generator=generator))
    return top, left, h, w


def torchvision_crop_box(
    height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None
) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop`` window ``(top, left, h, w)`` (10 trials + fallback)."""
    if generator is None:
        dummy = torch.empty(1, height, width, dtype=torch.uint8)  # only .shape is read
        return tuple(v2.RandomResizedCrop.get_params(dummy, list(scale), list(ratio)))  # type: ignore[arg-type]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(*scale, generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height  # fallback: centre crop at the clamped ratio
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest resizing with pixel-centre alignment."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


_KEYS_A = -0.5  # TF's bicubic ("Keys cubic" with a = -0.5); torch's bicubic uses a = -0.75


def _keys_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices ``[n_out, 4]`` and weights ``[n_out, 4]`` of TF's non-antialiased bicubic
    resize (``resize_bicubic`` with half-pixel centres): 4 taps around ``(i + 0.5) * n_in /
    n_out - 0.5``, Keys' cubic with a = -0.5; taps outside the image get weight 0 and the rest
    are renormalised to sum 1."""
    a = _KEYS_A
    pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    base = pos.floor()
    index = base[:, None] + torch.arange(-1, 3, dtype=torch.float64)  # [n_out, 4]
    x = (pos[:, None] - index).abs()  # distance to each tap, in [0, 2]
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    weight = torch.where(x <= 1, near, far)
    inside = (index >= 0) & (index <= n_in - 1)
    weight = weight * inside
    weight = weight / weight.sum(-1, keepdim=True)
    return index.clamp(0, n_in - 1).long(), weight.float()


@functools.lru_cache(maxsize=512)
def _keys_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The taps of :func:`_keys_taps` as a dense ``[n_out, n_in]`` float32 matrix (a band of 4
    non-zeros per row; duplicate clamped indices carry zero weight)."""
    index, weight = _keys_taps(n_in, n_out)
    rows = torch.arange(n_out)[:, None].expand(-1, 4)
    return torch.zeros(n_out, n_in).index_put_((rows, index), weight, accumulate=True)


def resize_bicubic_tf(image: torch.Tensor, size: int) -> torch.Tensor:
    """TF's ``tf.image.resize(image, (size, size), "bicubic")`` (antialias=False, the official
    resize): ``[C, H, W]`` (any real dtype) -> float32 ``[C, size, size]``, unclipped.
    Separable: ``M_h @ x @ M_w^T`` with the banded matrices of :func:`_keys_taps`, the cheaper
    axis first (dense matmuls beat 4-tap gathers on the CPU by about 2x)."""
    x = image.float()
    h, w = x.shape[-2:]
    mh, mw = _keys_matrix(h, size), _keys_matrix(w, size)
    if size * h * w + size * size * w <= h * w * size + size * h * size:
        return (mh @ x) @ mw.T  # rows first: [C, size, W] -> [C, size, size]
    return mh @ (x @ mw.T)  # columns first: [C, H, size] -> [C, size, size]


def paired_geometry(
    image: torch.Tensor,
    mask: np.ndarray,
    box: tuple[int, int, int, int],
    flip: bool,
    size: int,
    antialias: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """Crop ``box=(top, left, h, w)``, optionally flip, and resize to ``size x size``.

    Image: uint8 ``[3, H, W]`` tensor, resized bicubically. ``antialias=False`` (official: TF's
    bicubic resize does not antialias): float32 ``[3, size, size]`` on the 0..255 scale,
    clipped but not rounded (the official pipeline stays in float). ``antialias=True`` (a
    deviation): uint8 ``[3, size, size]`` from torch's antialiased uint8 fast path. Mask
    ``[H, W]``: nearest with the same pixel-centre convention, returned as ``int64 [size, size]``.
    """
    top, left, h, w = box
    img = image[:, top : top + h, left : left + w]
    m = mask[top : top + h, left : left + w]
    if flip:
        img = img.flip(-1)
        m = m[:, ::-1]
    if antialias:
        img = F.resize(img, [size, size], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    else:  # the official resize: TF's bicubic, no antialiasing, kept in float and clipped
        img = resize_bicubic_tf(img, size).clamp_(0.0, 255.0)
    m = m[_nearest_index(h, size)[:, None], _nearest_index(w, size)[None, :]]
    return img, m.astype(np.int64)


def _photometric(size: int, blur_p: float, solarize_p: float, jitter_p: float, gray_p: float):
    kernel = 2 * int(size / 20) + 1  # 23 taps at 224 (official: radius int(22.4 / 2) = 11)
    ops = [
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=jitter_p),
        v2.RandomGrayscale(p=gray_p),
    ]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # 0.5 on the [0, 1] scale
    return v2.Compose(ops)


class TwoViewTransform:
    """``(image PIL RGB, mask int [H, W]) -> dict(view_a, view_b, mask_a, mask_b)``.

    Args:
        image_size: side S of both square views (224 official).
        crop: ``"official"`` (clipped window, no rejection) or ``"torchvision"``.
        scale, ratio: crop area fraction and aspect range.
        flip_p: horizontal flip probability (one coin for image and mask).
        photometric: colour pipeline, one of :data:`PHOTOMETRIC_MODES`: ``"official"``
            (dm_pix semantics, the official recipe), ``"torchvision"`` (torchvision semantics, a
            deviation; the current default :data:`DEFAULT_PHOTOMETRIC`) or ``"none"``.
            ``True`` means the default mode; ``False`` is ``"none"`` (tests, visualisation).
        blur_p, solarize_p: per-view ``(a, b)`` probabilities, official ``(1.0, 0.1)``, ``(0, 0.2)``.
        normalize: apply ImageNet mean/std (else views are in [0, 1]).

    Output: ``view_*`` float32 ``[3, S, S]``, ``mask_*`` int64 ``[S, S]``. Randomness comes from
    torch's global RNG (seeded per DataLoader worker) unless ``generator`` is given to ``__call__``
    (geometry and ``"official"`` colour ops; torchvision's colour ops always use the global RNG).
    """

    def __init__(
        self,
        image_size: int = 224,
        crop: str = "official",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        photometric: str | bool = DEFAULT_PHOTOMETRIC,
        blur_p: tuple[float, float] = (1.0, 0.1),
        solarize_p: tuple[float, float] = (0.0, 0.2),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        normalize: bool = True,
        antialias: bool = False,
    ):
        if crop not in ("official", "torchvision"):
            raise ValueError(f"crop must be 'official' or 'torchvision', got {crop!r}")
        if image_size < 1 or not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"bad image_size={image_size} scale={scale} ratio={ratio}")
        self.image_size, self.crop, self.scale, self.ratio = int(image_size), crop, scale, ratio
        self.flip_p, self.normalize, self.antialias = flip_p, normalize, bool(antialias)
        if isinstance(photometric, bool):
            photometric = DEFAULT_PHOTOMETRIC if photometric else "none"
        if photometric not in PHOTOMETRIC_MODES:
            raise ValueError(
                f"photometric must be one of {PHOTOMETRIC_MODES} (or True/False), "
                f"got {photometric!r}"
            )
        self.photometric = photometric
        self._box = official_crop_box if crop == "official" else torchvision_crop_box
        if photometric == "torchvision":
            self.photo = [
                _photometric(image_size, blur_p[i], solarize_p[i], jitter_p, gray_p) for i in (0, 1)
            ]
        elif photometric == "official":
            self.photo = [
                OfficialPhotometric(blur_p[i], solarize_p[i], jitter_p, gray_p) for i in (0, 1)
            ]
        else:
            self.photo = None
        self._norm = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def geometry(self, image: torch.Tensor, mask: np.ndarray, generator=None):
        """Crop window, flip and resize of one view: ``(image [3,S,S], int64 ndarray [S,S])``,
        the image float32 on the 0..255 scale (``antialias=False``) or uint8 (``True``)."""
        box = self._box(image.shape[1], image.shape[2], self.scale, self.ratio, generator)
        flip = float(torch.rand((), generator=generator)) < self.flip_p
        return paired_geometry(image, mask, box, flip, self.image_size, self.antialias)

    def colour(self, x: torch.Tensor, which: int = 0, generator=None) -> torch.Tensor:
        """Colour ops of view ``which`` (0 = a, 1 = b) on a ``[3,S,S]`` view on the 0..255
        scale (uint8, or float from the non-antialiased resize), then normalisation: float32
        ``[3,S,S]``. Never sees the mask."""
        if self.photometric == "official":  # float32 in [0, 1], then dm_pix colour ops
            x = self.photo[which](x.float().div(255.0), generator)
        else:
            if self.photo is not None:
                if x.dtype != torch.uint8:  # torchvision's colour ops expect uint8 pixels
                    x = x.round().to(torch.uint8)
                x = self.photo[which](x)  # torchvision ops on uint8
            x = x.float().div(255.0)
        return self._norm(x) if self.normalize else x

    def view(self, image: torch.Tensor, mask: np.ndarray, which: int = 0, generator=None):
        """One augmented view of a uint8 ``[3, H, W]`` image: ``(float [3,S,S], int64 [S,S])``."""
        x, m = self.geometry(image, mask, generator)
        return self.colour(x, which, generator), torch.from_numpy(np.ascontiguousarray(m))

    def __call__(self, image: Image.Image, mask: np.ndarray, generator=None) -> dict:
        mask = np.asarray(mask)
        if mask.shape != (image.height, image.width):
            raise ValueError(
                f"mask shape {mask.shape} does not match image size {(image.height, image.width)}"
            )
        pixels = F.pil_to_tensor(image)  # uint8 [3, H, W], shared by both views
        # both windows first, then the colour ops: with a seeded generator the geometry (and
        # so the masks) does not depend on the colour mode
        (xa, ma), (xb, mb) = (self.geometry(pixels, mask, generator) for _ in range(2))
        return {
            "view_a": self.colour(xa, 0, generator),
            "view_b": self.colour(xb, 1, generator),
            "mask_a": torch.from_numpy(np.ascontiguousarray(ma)),
            "mask_b": torch.from_numpy(np.ascontiguousarray(mb)),
        }

    def __repr__(self) -> str:
        return (
            f"TwoViewTransform(image_size={self.image_size}, crop={self.crop!r}, "
            f"photometric={self.photometric!r}, antialias={self.antialias})"
        )
