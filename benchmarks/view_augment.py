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

from detcon.data.photometric import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    solarize,
    to_grayscale,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, zero padding. x ``[n, 3, S, S]``."""
    n, c, hh, ww = x.shape
    radius = int(hh / 10 / 2)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))  # [n, taps]
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*3, taps]
    y = x.reshape(1, n * c, hh, ww)
    y = F.conv2d(y, k[:, None, None, :], padding=(0, radius), groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], padding=(radius, 0), groups=n * c)
    return y.reshape(n, c, hh, ww)


def photometric(x: torch.Tensor, gen: torch.Generator, blur_p: float, solarize_p: float):
    """The official colour pipeline on a batch ``[n, 3, S, S]`` in [0, 1], one draw per image."""
    n = x.shape[0]
    u = torch.rand(n, 9, generator=gen).to(x.device)
    order = torch.rand(n, 4, generator=gen).argsort(1).to(x.device)  # a permutation per image
    params = (
        (-0.4 + 0.8 * u[:, 2]).view(n, 1, 1, 1),  # brightness delta
        (0.6 + 0.8 * u[:, 3]).view(n, 1, 1, 1),  # contrast factor
        (0.8 + 0.4 * u[:, 4]).view(n, 1, 1, 1),  # saturation factor
        (-0.1 + 0.2 * u[:, 5]).view(n, 1, 1),  # hue delta
    )
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    jitter = u[:, 0] < 0.8
    for slot in range(4):
        for k, op in enumerate(ops):
            sel = jitter & (order[:, slot] == k)
            if sel.any():
                x[sel] = op(x[sel], params[k][sel]).clamp_(0.0, 1.0)
    gray = u[:, 1] < 0.2
    if gray.any():
        x[gray] = to_grayscale(x[gray]).clamp_(0.0, 1.0)
    blur = u[:, 6] < blur_p
    if blur.any():
        x[blur] = _blur(x[blur], 0.1 + 1.9 * u[blur, 7])
    sol = u[:, 8] < solarize_p
    if sol.any():
        x[sol] = solarize(x[sol], 0.5)
    return x.clamp_(0.0, 1.0)


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
        if colour:
            view = photometric(view, gen, BLUR_P[v], SOLARIZE_P[v])
        if maps is None:
            m = torch.zeros(len(x), size, size, dtype=torch.long, device=x.device)
        else:
            m = F.grid_sample(maps[:, None].float(), grid, mode="nearest", align_corners=False)
            m = m[:, 0].round().long()
        out.append(((view - mean) / std, m))
    return out[0][0], out[1][0], out[0][1], out[1][1]
