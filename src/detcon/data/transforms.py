"""Paired two-view augmentations: geometry on (image, mask) together, photometry on the image only.

Recipe (docs/official.md §2-3, BYOL's asymmetric views), per view independently:

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

* ``"official"`` (the default): the official dm_pix semantics in float32 (:mod:`detcon.data.photometric`):
  additive brightness, contrast around the per-channel mean, HSV saturation and hue, a clip to
  [0, 1] after every op, blur with zero ('SAME') padding, randomness from ``generator``;
* ``"torchvision"`` (a deviation): torchvision v2 ops on uint8 (brightness,
  contrast and saturation are multiplicative factors in [1-x, 1+x]; contrast around the gray
  mean, saturation blended with grayscale; reflect-padded blur; global RNG only).

Masks stay ``int64`` (no uint8 wrap) and are never touched by photometric ops.

Where step 4 runs is chosen by ``augment_on``: ``"host"`` (default) runs it here, per image;
``"device"`` stops after step 3 and returns uint8 views (the official resize's float output
rounded to the nearest integer) with each view's drawn colour parameters (``photo_a``,
``photo_b``: float32 ``[NUM_PARAMS]``, drawn from the same RNG in the same order as the host
path), which :func:`detcon.data.device_augment.augment_on_device` applies batched on the
training device (``"official"`` or ``"none"`` colour modes only).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detcon.config import PHOTOMETRIC

from .photometric import NUM_PARAMS, PARAM_ORDER, OfficialPhotometric

__all__ = [
    "TwoViewTransform",
    "official_crop_box",
    "torchvision_crop_box",
    "paired_geometry",
    "resize_bicubic_tf",
    "resize_window_tf",
    "window_taps",
    "PHOTOMETRIC_MODES",
    "DEFAULT_PHOTOMETRIC",
    "AUGMENT_ON",
    "identity_params",
]

#: Colour pipelines of TwoViewTransform: "official" (dm_pix semantics, the official recipe),
#: "torchvision" (torchvision v2 semantics, a deviation) and "none" (no colour ops).
PHOTOMETRIC_MODES = PHOTOMETRIC  # the one list: detcon.config.Photometric
#: Mode used by ``photometric=True`` and by default: the official recipe.
DEFAULT_PHOTOMETRIC = "official"

#: Where the colour ops run: "host" (per image, in the loader) or "device" (batched, on the
#: training device: detcon.data.device_augment).
AUGMENT_ON = ("host", "device")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def official_crop_box(
    height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None
) -> tuple[int, int, int, int]:
    """Official DetCon crop window ``(top, left, h, w)``: rounded, clipped, no rejection."""
    area = _uniform(scale[0], scale[1], generator) * height * width
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
        top, left, h, w = v2.RandomResizedCrop.get_params(dummy, list(scale), list(ratio))
        return top, left, h, w
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
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


#: Crops above this many pixels are resized with 4-tap gathers, smaller ones with the dense
#: matrices (one thread: the matmuls win on small crops, the gathers 1.5-4x on crops of
#: 0.2-1 Mpx; measured with the views of benchmarks/bench_pipeline.py).
_GATHER_ABOVE_PIXELS = 120_000


def _resize_axis_taps(x: torch.Tensor, n_out: int, taps=None) -> torch.Tensor:
    """Resize ``[C, N, M]`` along N with 4 taps per output (``taps = (index, weight)``, each
    ``[n_out, 4]``; default those of :func:`_keys_taps`): ``[C, n_out, M]`` float32 (the rows
    are gathered first, on the input dtype, then weighted and summed)."""
    index, weight = taps if taps is not None else _taps(x.shape[1], n_out)
    c, m = x.shape[0], x.shape[2]
    g = x.index_select(1, index.flatten()).view(c, n_out, 4, m).float()  # [C, n_out, 4, M]
    out = g[:, :, 0] * weight[:, 0, None]
    for k in range(1, 4):
        out.addcmul_(g[:, :, k], weight[:, k, None])
    return out


@functools.lru_cache(maxsize=512)
def _taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _keys_taps(n_in, n_out)


def window_taps(n_in: int, start: float, length: float, n_out: int, scale: float = 1.0):
    """Taps ``(index [n_out, 4], weight [n_out, 4])`` of TF's bicubic resize of the window
    ``[start, start + length)`` (original pixel units) of an axis stored at ``1 / scale`` of
    its size (``n_in`` pixels; reduced pixel j covers original ``[j*scale, (j+1)*scale)``).
    Output i samples original coordinate ``start + (i + 0.5) * length / n_out``, i.e. reduced
    index coordinate ``that / scale - 0.5``; taps outside the window's reduced pixels get
    weight 0 and the rest are renormalised. ``scale=1`` with an integer window is exactly
    :func:`_keys_taps` of the crop, shifted by ``start``."""
    a = _KEYS_A
    pos = (start + (torch.arange(n_out, dtype=torch.float64) + 0.5) * (length / n_out)) / scale
    pos = pos - 0.5
    lo = max(0, math.ceil(start / scale - 0.5))  # reduced pixels whose centre is in the window
    hi = min(n_in - 1, math.floor((start + length) / scale - 0.5))
    hi = max(hi, lo)
    index = pos.floor()[:, None] + torch.arange(-1, 3, dtype=torch.float64)  # [n_out, 4]
    x = (pos[:, None] - index).abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    weight = torch.where(x <= 1, near, torch.where(x < 2, far, 0.0))
    weight = weight * ((index >= lo) & (index <= hi))
    total = weight.sum(-1, keepdim=True)
    weight = torch.where(total > 0, weight / total.clamp_min(1e-12), 0.25)
    return index.clamp(lo, hi).long(), weight.float()


def resize_window_tf(image: torch.Tensor, box, size: int, scale: float = 1.0) -> torch.Tensor:
    """TF bicubic resize of the window ``box = (top, left, h, w)`` (original pixels) of
    ``image [C, H', W']`` stored at ``1 / scale`` of the original size: float32
    ``[C, size, size]``, unclipped. ``scale=1``: equal to ``resize_bicubic_tf`` of the crop."""
    top, left, h, w = box
    rows = window_taps(image.shape[1], top, h, size, scale)
    cols = window_taps(image.shape[2], left, w, size, scale)
    y = _resize_axis_taps(image, size, rows)  # [C, size, W']
    return _resize_axis_taps(y.transpose(1, 2), size, cols).transpose(1, 2)


def resize_bicubic_tf(image: torch.Tensor, size: int) -> torch.Tensor:
    """TF's ``tf.image.resize(image, (size, size), "bicubic")`` (antialias=False, the official
    resize): ``[C, H, W]`` (any real dtype) -> float32 ``[C, size, size]``, unclipped.
    Separable. Small crops: ``M_h @ x @ M_w^T`` with the banded matrices of :func:`_keys_taps`,
    the cheaper axis first (dense matmuls beat 4-tap gathers there by about 2x); crops above
    ``_GATHER_ABOVE_PIXELS``: the 4 taps gathered per axis, rows then columns (the same
    weights; the two agree to float rounding, about 1e-4 on the 0..255 scale)."""
    h, w = image.shape[-2:]
    if h * w > _GATHER_ABOVE_PIXELS and image.dim() == 3:
        y = _resize_axis_taps(image, size)  # [C, size, W]
        return _resize_axis_taps(y.transpose(1, 2), size).transpose(1, 2)  # [C, size, size]
    x = image.float()
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
    mask_only: bool = False,
) -> tuple[torch.Tensor | None, np.ndarray]:
    """Crop ``box=(top, left, h, w)``, optionally flip, and resize to ``size x size``.

    Image: uint8 ``[3, H, W]`` tensor, resized bicubically. ``antialias=False`` (official: TF's
    bicubic resize does not antialias): float32 ``[3, size, size]`` on the 0..255 scale,
    clipped but not rounded (the official pipeline stays in float). ``antialias=True`` (a
    deviation): uint8 ``[3, size, size]`` from torch's antialiased uint8 fast path. Mask
    ``[H, W]``: nearest with the same pixel-centre convention, returned as ``int64 [size, size]``.
    ``mask_only``: skip the image (returned as None).
    """
    top, left, h, w = box
    m = mask[top : top + h, left : left + w]
    if flip:
        m = m[:, ::-1]
    m = m[_nearest_index(h, size)[:, None], _nearest_index(w, size)[None, :]]
    if mask_only:
        return None, m.astype(np.int64)
    img = image[:, top : top + h, left : left + w]
    if flip:
        img = img.flip(-1)
    if antialias:
        img = F.resize(img, [size, size], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    else:  # the official resize: TF's bicubic, no antialiasing, kept in float and clipped
        img = resize_bicubic_tf(img, size).clamp_(0.0, 255.0)
    return img, m.astype(np.int64)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """A resized view on the 0..255 scale as uint8 (the float resize rounded to nearest)."""
    return x if x.dtype == torch.uint8 else x.round().clamp_(0, 255).to(torch.uint8)


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


def identity_params() -> torch.Tensor:
    """Colour parameters that change nothing (``photometric="none"`` with device-side
    augmentation): no op runs, only the normalisation."""
    p = torch.zeros(NUM_PARAMS)
    p[PARAM_ORDER] = torch.arange(4, dtype=torch.float32)
    return p


class TwoViewTransform:
    """``(image PIL RGB, mask int [H, W]) -> dict(view_a, view_b, mask_a, mask_b)``.

    Args:
        image_size: side S of both square views (224 official).
        crop: ``"official"`` (clipped window, no rejection) or ``"torchvision"``.
        scale, ratio: crop area fraction and aspect range.
        flip_p: horizontal flip probability (one coin for image and mask).
        photometric: colour pipeline, one of :data:`PHOTOMETRIC_MODES`: ``"official"``
            (dm_pix semantics, the official recipe and :data:`DEFAULT_PHOTOMETRIC`),
            ``"torchvision"`` (torchvision semantics, a deviation) or ``"none"``.
            ``True`` means the default mode; ``False`` is ``"none"`` (tests, visualisation).
        blur_p, solarize_p: per-view ``(a, b)`` probabilities, official ``(1.0, 0.1)``, ``(0, 0.2)``.
        normalize: apply ImageNet mean/std (else views are in [0, 1]).
        jpeg_draft: in :meth:`from_file`, decode a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's
            DCT scaling) when both crop windows stay at least ``draft_margin`` times the view
            size there. The crop geometry is unchanged (windows are resampled at their exact
            original coordinates; masks are cropped at full resolution), but the pixels are the
            DCT's low-pass of the original, so views are slightly smoother than with a full
            decode (a deviation; off by default). Needs ``antialias=False``.
        draft_margin: see ``jpeg_draft`` (default 1: the reduced crop is never upscaled).
        augment_on: ``"host"`` (colour ops here) or ``"device"``: uint8 views plus the drawn
            colour parameters ``photo_a`` / ``photo_b`` (see the module docstring); the colour
            ops and normalisation then run in ``device_augment.augment_on_device``.

    Output: ``view_*`` float32 ``[3, S, S]`` (``augment_on="device"``: uint8 ``[3, S, S]`` and
    ``photo_*`` float32 ``[NUM_PARAMS]``), ``mask_*`` int64 ``[S, S]``. Randomness comes from
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
        augment_on: str = "host",
        jpeg_draft: bool = False,
        draft_margin: float = 1.0,
    ):
        if jpeg_draft and antialias:
            raise ValueError("jpeg_draft=True needs antialias=False (the official resize)")
        if draft_margin < 1:
            raise ValueError(f"draft_margin must be >= 1, got {draft_margin}")
        self.jpeg_draft, self.draft_margin = bool(jpeg_draft), float(draft_margin)
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
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
        if augment_on == "device" and photometric == "torchvision":
            raise ValueError(
                "augment_on='device' implements the official colour ops only: use "
                "photometric='official' (or 'none'), or augment_on='host'"
            )
        self.augment_on = augment_on
        self._box = official_crop_box if crop == "official" else torchvision_crop_box
        self.photo: Any  # the two views' colour ops, or None
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

    def draw_colour(self, which: int = 0, generator=None) -> torch.Tensor:
        """View ``which``'s colour parameters, float32 ``[NUM_PARAMS]``: the numbers
        :meth:`colour` would draw (official mode), or :func:`identity_params` (``"none"``)."""
        if self.photometric == "official":
            return self.photo[which].draw(generator)
        if self.photometric == "none":
            return identity_params()
        raise ValueError("torchvision colour ops draw no parameter vector")

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
        return self._finish(xa, ma, xb, mb, generator)

    def windows(self, height: int, width: int, generator=None) -> list[tuple[tuple, bool]]:
        """The two views' ``(box, flip)``, drawn exactly as :meth:`geometry` draws them."""
        out = []
        for _ in range(2):
            box = self._box(height, width, self.scale, self.ratio, generator)
            out.append((box, float(torch.rand((), generator=generator)) < self.flip_p))
        return out

    def draft_scale(self, windows) -> int:
        """Largest JPEG reduction s in {8, 4, 2} keeping every window's shorter side at least
        ``draft_margin * image_size`` pixels at 1/s (1: decode in full)."""
        side = min(min(box[2], box[3]) for box, _ in windows)
        return next((s for s in (8, 4, 2) if side / s >= self.draft_margin * self.image_size), 1)

    def from_file(self, path, mask: np.ndarray, generator=None) -> dict:
        """As ``self(load_image(path), mask, generator)`` (the same draws in the same order),
        with JPEG draft decoding when ``jpeg_draft`` is on and the crops allow it. ``mask``
        is the full-resolution ``[H, W]`` map of the upright image."""
        from .decode import image_size, load_image, load_image_draft

        if not self.jpeg_draft:
            return self(load_image(path), mask, generator)
        h, w, fmt = image_size(path)
        if fmt != "JPEG":  # nothing to gain: the ordinary path
            return self(load_image(path), mask, generator)
        mask = np.asarray(mask)
        if mask.shape != (h, w):
            raise ValueError(f"mask shape {mask.shape} does not match image size {(h, w)}")
        windows = self.windows(h, w, generator)
        image, s = load_image_draft(path, self.draft_scale(windows))
        pixels = F.pil_to_tensor(image)  # uint8 [3, ceil(H/s), ceil(W/s)]
        if s == 1 and pixels.shape[1:] != (h, w):
            raise ValueError(f"{path}: decoded size {tuple(pixels.shape[1:])} != header {(h, w)}")
        views = []
        for box, flip in windows:
            if s == 1:  # the ordinary path, bit for bit
                views.append(paired_geometry(pixels, mask, box, flip, self.image_size))
                continue
            x = resize_window_tf(pixels, box, self.image_size, s).clamp_(0.0, 255.0)
            # the TF resize is mirror-symmetric: resizing then flipping = flipping then resizing
            x = x.flip(-1) if flip else x
            _, m = paired_geometry(pixels, mask, box, flip, self.image_size, mask_only=True)
            views.append((x, m))
        (xa, ma), (xb, mb) = views
        return self._finish(xa, ma, xb, mb, generator)

    def _finish(self, xa, ma, xb, mb, generator) -> dict:
        """Colour ops (host) or uint8 views + drawn parameters (device) of the two views."""
        if self.augment_on == "device":
            return {
                "view_a": _to_uint8(xa),
                "view_b": _to_uint8(xb),
                "mask_a": torch.from_numpy(np.ascontiguousarray(ma)),
                "mask_b": torch.from_numpy(np.ascontiguousarray(mb)),
                "photo_a": self.draw_colour(0, generator),
                "photo_b": self.draw_colour(1, generator),
            }
        return {
            "view_a": self.colour(xa, 0, generator),
            "view_b": self.colour(xb, 1, generator),
            "mask_a": torch.from_numpy(np.ascontiguousarray(ma)),
            "mask_b": torch.from_numpy(np.ascontiguousarray(mb)),
        }

    def __repr__(self) -> str:
        return (
            f"TwoViewTransform(image_size={self.image_size}, crop={self.crop!r}, "
            f"photometric={self.photometric!r}, antialias={self.antialias}, "
            f"augment_on={self.augment_on!r}, jpeg_draft={self.jpeg_draft})"
        )
