"""Batched two-view augmentation of uint8 scenes on any device (the efficiency benchmark's data
path: scenes stay uint8 on the GPU, views are made there in one batch).

Per view, as the official DetCon / BYOL recipe (``detcon.data.transforms`` and
``detcon.data.photometric`` do the same per image on the CPU):

* crop: the official window (area fraction ~ U(0.08, 1), log-aspect ~ U(log 3/4, log 4/3),
  clipped to the image, no rejection), continuous rather than rounded to whole pixels, resized
  to ``size`` with bilinear interpolation (the official resize is bicubic); a horizontal flip
  with p = 0.5. The region map gets the same window with nearest sampling;
* the official colour ops with their official semantics and probabilities, one draw per image:
  the jitter block (additive brightness 0.4, per-channel contrast 0.4, HSV saturation 0.2, hue
  0.1; a clip after each; a random order per image) with p = 0.8, grayscale p = 0.2, Gaussian
  blur (sigma ~ U(0.1, 2), ``2 * int(size / 20) + 1`` taps, zero padding) with p = 1.0 / 0.1 and
  solarize with p = 0.0 / 0.2 for views a / b; ImageNet mean / std normalisation.

Everything is drawn from one ``torch.Generator`` on the CPU, so the views are a function of
its seed whatever the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detcon.data.device_augment import apply_photometric
from detcon.data.photometric import (
    NUM_PARAMS,
    PARAM_APPLY,
    PARAM_BLUR,
    PARAM_BRIGHT,
    PARAM_GRAY,
    PARAM_ORDER,
    PARAM_SIGMA,
    PARAM_SOLARIZE,
)
from detcon.data.transforms import IMAGENET_MEAN, IMAGENET_STD

BLUR_P = (1.0, 0.1)
SOLARIZE_P = (0.0, 0.2)


def crop_params(n: int, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """``[n, 5]`` float: (top, left, height, width) as fractions of the image side, and a flip
    flag. Official window: area fraction ~ U(scale), log-aspect ~ U(log ratio), each side
    clipped to the image, then a uniform position."""
    u = torch.rand(n, 5, generator=gen, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    top, left = (1 - h) * u[:, 2], (1 - w) * u[:, 3]
    flip = (u[:, 4] < 0.5).double()
    return torch.stack([top, left, h, w, flip], 1).float()


def crop_grid(params: torch.Tensor, size: int, device) -> torch.Tensor:
    """Sampling grid ``[n, size, size, 2]`` for ``F.grid_sample`` (align_corners=False) that
    maps each output pixel centre into its crop window (mirrored when flipped)."""
    top, left, h, w, flip = params.to(device).unbind(1)
    sx = torch.where(flip > 0, -w, w)
    cx, cy = 2 * (left + w / 2) - 1, 2 * (top + h / 2) - 1
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    return F.affine_grid(theta, [len(params), 1, size, size], align_corners=False)


def draw_photometric(n: int, gen: torch.Generator, blur_p: float, solarize_p: float):
    """``[n, NUM_PARAMS]`` colour parameters of the official recipe, one draw per image, in the
    layout of :mod:`detcon.data.photometric` (applied by
    :func:`detcon.data.device_augment.apply_photometric`)."""
    u = torch.rand(n, 9, generator=gen)
    order = torch.rand(n, 4, generator=gen).argsort(1)  # a permutation per image
    p = torch.zeros(n, NUM_PARAMS)
    p[:, PARAM_APPLY] = (u[:, 0] < 0.8).float()[:, None]  # the jitter block, p = 0.8
    p[:, PARAM_BRIGHT] = -0.4 + 0.8 * u[:, 2]  # brightness delta
    p[:, PARAM_BRIGHT + 1] = 0.6 + 0.8 * u[:, 3]  # contrast factor
    p[:, PARAM_BRIGHT + 2] = 0.8 + 0.4 * u[:, 4]  # saturation factor
    p[:, PARAM_BRIGHT + 3] = -0.1 + 0.2 * u[:, 5]  # hue delta
    p[:, PARAM_ORDER] = order.float()  # op applied at position j
    p[:, PARAM_GRAY] = (u[:, 1] < 0.2).float()
    p[:, PARAM_BLUR] = (u[:, 6] < blur_p).float()
    p[:, PARAM_SIGMA] = 0.1 + 1.9 * u[:, 7]
    p[:, PARAM_SOLARIZE] = (u[:, 8] < solarize_p).float()
    return p


def make_views(
    images: torch.Tensor,
    maps: torch.Tensor | None,
    size: int,
    gen: torch.Generator,
    colour: bool = True,
):
    """Two augmented views of a batch.

    Args:
        images: uint8 ``[n, S, S, 3]`` scenes (on the device that should do the work).
        maps: integer region maps ``[n, S, S]`` (ids < 2**24) or None (whole-image methods).
        size: view side in pixels.
        gen: CPU generator; every random number comes from it.
        colour: apply the colour ops (off: crops and flips only).

    Returns ``(view_a, view_b, map_a, map_b)``: float32 ``[n, 3, size, size]`` normalised
    views and long ``[n, size, size]`` region maps (zeros when ``maps`` is None).
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 [n, S, S, 3], got {images.dtype} {tuple(images.shape)}"
        )
    x = images.permute(0, 3, 1, 2).float().div_(255.0)  # [n, 3, S, S]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    out = []
    for v in range(2):
        grid = crop_grid(crop_params(len(x), gen), size, x.device)
        view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if colour:  # the library's batched colour ops (0..255 scale in, normalised out)
            params = draw_photometric(len(x), gen, BLUR_P[v], SOLARIZE_P[v])
            view = apply_photometric(view.mul_(255.0), params)
        else:
            view = (view - mean) / std
        if maps is None:
            m = torch.zeros(len(x), size, size, dtype=torch.long, device=x.device)
        else:
            m = F.grid_sample(maps[:, None].float(), grid, mode="nearest", align_corners=False)
            m = m[:, 0].round().long()
        out.append((view, m))
    return out[0][0], out[1][0], out[0][1], out[1][1]
