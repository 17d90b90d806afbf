"""Batched photometric augmentation on the training device (``data.augment_on=device``).

With ``TwoViewTransform(augment_on="device")`` the loader workers only decode, crop, flip and
resize: each item carries uint8 views ``view_a`` / ``view_b`` ``[3, S, S]`` and, per view, the
colour parameters drawn in the worker (``photo_a`` / ``photo_b``: float32 ``[NUM_PARAMS]``,
layout in :mod:`detcon.data.photometric`). The drawn numbers are those the per-image path
would draw from the same RNG, so a run is as reproducible as with host-side augmentation.
This module applies them to a whole batch on any device:

* the four jitter ops (dm_pix semantics: additive brightness, per-channel-mean contrast, HSV
  saturation and hue, a clip after each) in each image's own random order,
* grayscale, Gaussian blur (per-image sigma, separable, zero 'SAME' padding), solarize,
* a final clip and ImageNet mean/std normalisation.

Each op runs once per image that needs it (the images of one op at one position of the order
are gathered, transformed and scattered back), so the work equals the per-image path's. The
grouping is planned from a host copy of the parameters: keep them on the CPU (as
:func:`augment_on_device` does) and no device synchronisation happens.

With the same views and parameters the output equals the per-image path
(``OfficialPhotometric.apply`` + normalisation) to float rounding (tests/test_device_augment.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .photometric import (
    NUM_PARAMS,
    PARAM_APPLY,
    PARAM_BLUR,
    PARAM_BRIGHT,
    PARAM_GRAY,
    PARAM_ORDER,
    PARAM_SIGMA,
    PARAM_SOLARIZE,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    solarize,
    to_grayscale,
)
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["apply_photometric", "augment_on_device", "batched_gaussian_blur", "is_device_batch"]

#: Keys of the per-view parameters in an item / batch of ``augment_on="device"``.
PARAM_KEYS = {"view_a": "photo_a", "view_b": "photo_b"}

# each takes one factor per image here (a tensor broadcast against the batch)
_OPS: tuple[Callable[[torch.Tensor, Any], torch.Tensor], ...] = (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_hue,
)


def batched_gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x [n, C, H, W]`` with one sigma per image (``[n]``), zero
    ('SAME') padding, ``2 * int(kernel_size / 2) + 1`` taps (dm_pix's rounding), horizontal
    then vertical. Written as a sum of shifted copies (multiply-adds in float32 on any device):
    no convolution backend, so no TF32 or algorithm choice can change the result."""
    n, _, h, w = x.shape
    radius = int(kernel_size / 2)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(device=x.device, dtype=x.dtype).view(n, 1)
    k = torch.exp(-(t**2) / (2.0 * s**2))
    k = (k / k.sum(-1, keepdim=True)).view(n, -1, 1, 1, 1)  # [n, taps, 1, 1, 1]
    y = F.pad(x, (radius, radius))  # zeros left and right
    out = y[..., 0:w] * k[:, 0]
    for j in range(1, 2 * radius + 1):
        out.addcmul_(y[..., j : j + w], k[:, j])
    y = F.pad(out, (0, 0, radius, radius))  # zeros above and below
    out = y[..., 0:h, :] * k[:, 0]
    for j in range(1, 2 * radius + 1):
        out.addcmul_(y[..., j : j + h, :], k[:, j])
    return out


def _where(flags: torch.Tensor, device) -> torch.Tensor | None:
    """Indices (on ``device``) of the True entries of the host bool tensor ``flags``."""
    idx = flags.nonzero().flatten()
    return idx.to(device, non_blocking=True) if idx.numel() else None


def _colour_ops_(x: torch.Tensor, host: torch.Tensor, dev: torch.Tensor, blur_divider: float):
    """The colour ops, in place, on float32 ``x [n, 3, S, S]`` in [0, 1] with parameters
    ``host`` (CPU copy: the plan) and ``dev`` (on x's device: the values)."""
    device = x.device
    apply, order = host[:, PARAM_APPLY] > 0, host[:, PARAM_ORDER].long()  # [n, 4] each
    for j in range(4):  # position in each image's own jitter order
        for i, op in enumerate(_OPS):
            idx = _where(apply[:, i] & (order[:, j] == i), device)
            if idx is None:
                continue
            value = dev[idx, PARAM_BRIGHT + i]
            value = value.view(-1, 1, 1) if i == 3 else value.view(-1, 1, 1, 1)  # hue: planes
            x.index_copy_(0, idx, op(x[idx], value).clamp_(0.0, 1.0))
    idx = _where(host[:, PARAM_GRAY] > 0, device)
    if idx is not None:
        x.index_copy_(0, idx, to_grayscale(x[idx]).clamp_(0.0, 1.0))
    idx = _where(host[:, PARAM_BLUR] > 0, device)
    if idx is not None:
        blurred = batched_gaussian_blur(x[idx], dev[idx, PARAM_SIGMA], x.shape[-2] / blur_divider)
        x.index_copy_(0, idx, blurred)
    idx = _where(host[:, PARAM_SOLARIZE] > 0, device)
    if idx is not None:
        x.index_copy_(0, idx, solarize(x[idx], 0.5))
    return x.clamp_(0.0, 1.0)


def apply_photometric(
    views: torch.Tensor,
    params: torch.Tensor,
    *,
    normalize: bool = True,
    blur_divider: float = 10.0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    chunk: int | None = None,
) -> torch.Tensor:
    """The official colour pipeline for a batch: ``views [B, 3, S, S]`` (uint8, or float on the
    0..255 scale) and their drawn ``params [B, NUM_PARAMS]`` -> float32 ``[B, 3, S, S]`` on the
    views' device, normalised with ``mean`` / ``std`` (``normalize=False``: in [0, 1]).

    ``blur_divider``: kernel size = S / blur_divider (official 10, as ``OfficialPhotometric``).
    ``params`` may live anywhere; a copy on the CPU plans the per-op groups (one sync if they
    are on an accelerator). ``chunk``: images processed together (default: the whole batch on
    an accelerator; 1 on the CPU, where one image's planes stay in cache: a whole batch of 64
    at 224 px measured 2x slower per image). The result does not depend on ``chunk``."""
    if views.dim() != 4 or views.shape[1] != 3:
        raise ValueError(f"expected views [B, 3, S, S], got {tuple(views.shape)}")
    if params.dim() != 2 or params.shape != (views.shape[0], NUM_PARAMS):
        raise ValueError(
            f"expected params [{views.shape[0]}, {NUM_PARAMS}], got {tuple(params.shape)}"
        )
    device, n = views.device, views.shape[0]
    chunk = max(1, int(chunk or (1 if device.type == "cpu" else n)))
    host = params.detach().to("cpu", torch.float32)  # the plan: which image gets which op
    dev = params.detach().to(device, torch.float32, non_blocking=True)
    out = torch.empty(views.shape, dtype=torch.float32, device=device)
    if normalize:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        x = views[part].to(torch.float32).div_(255.0)  # a new tensor: views are not modified
        x = _colour_ops_(x, host[part], dev[part], blur_divider)
        out[part] = x.sub_(m).div_(s) if normalize else x
    return out


def is_device_batch(batch: dict) -> bool:
    """True for items / batches of ``TwoViewTransform(augment_on="device")``."""
    return all(k in batch for k in PARAM_KEYS.values())


def augment_on_device(
    batch: dict,
    device: torch.device | str,
    *,
    channels_last: bool = False,
    normalize: bool = True,
    blur_divider: float = 10.0,
) -> dict:
    """Turn a collated ``augment_on="device"`` batch into the model's input on ``device``.

    ``batch``: ``view_a`` / ``view_b`` uint8 ``[B, 3, S, S]``, ``photo_a`` / ``photo_b``
    float32 ``[B, NUM_PARAMS]`` (CPU, as the loader gives them) and any other entries.
    Returns a new dict: the views are float32 ``[B, 3, S, S]`` on ``device`` (normalised, in
    ``channels_last`` memory format if asked), the ``photo_*`` entries are dropped and every
    other entry is passed through unchanged. A batch without ``photo_*`` entries (host-side
    augmentation) is an error, so a misconfigured run fails on its first batch."""
    if not is_device_batch(batch):
        raise KeyError(
            "batch has no photo_a / photo_b parameters: build the dataset with "
            "augment_on='device' (data.augment_on=device) or do not call augment_on_device"
        )
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {k: v for k, v in batch.items() if k not in PARAM_KEYS.values()}
    for view, key in PARAM_KEYS.items():
        pixels = batch[view]
        if pixels.dtype != torch.uint8:
            raise TypeError(f"{view}: expected uint8 views from the loader, got {pixels.dtype}")
        pixels = pixels.to(device, non_blocking=True)
        x = apply_photometric(pixels, batch[key], normalize=normalize, blur_divider=blur_divider)
        out[view] = x.contiguous(memory_format=fmt)
    return out
