"""Official (dm_pix) photometric augmentations in torch: the DetCon / BYOL colour recipe.

These reproduce the semantics of the official ``utils/augmentations.py::postprocess``, which
calls dm_pix (docs/official.md §3), on one float32 image ``[3, H, W]`` in [0, 1]:

* brightness: ``x + delta``, delta ~ U[-0.4, 0.4) (additive, unlike torchvision);
* contrast: ``f * (x - mean) + mean`` with the **per-channel** spatial mean, f ~ U[0.6, 1.4);
* saturation: HSV saturation times f ~ U[0.8, 1.2), clipped to [0, 1], hue and value kept.
  In RGB this is ``v - k * (v - x)`` with v = max over channels and k = min(f, v / (v - min));
  the per-pixel anchor is the value v, not a grayscale (torchvision blends with grayscale);
* hue: HSV hue + delta (mod 1), delta ~ U[-0.1, 0.1);
* each of the four is followed by a clip to [0, 1]; they run in a random order (one
  permutation per image) and the whole block with p = 0.8;
* grayscale (luma 0.2989, 0.5870, 0.1140, three equal channels) with p = 0.2, then a clip;
* Gaussian blur with p = blur_p, sigma ~ U(0.1, 2.0), ``2 * int(H / 10 / 2) + 1`` taps (23 at
  224), separable (horizontal then vertical), **zero padding** ('SAME' convolution, as in dm_pix:
  border pixels are darkened);
* solarize with p = solarize_p: ``x -> 1 - x`` where ``x >= 0.5``;
* a final clip to [0, 1].

Coins use ``u < p`` (dm_pix ``u <= p``; they differ only when u == p exactly). Every call draws
the same numbers (9 uniforms and one permutation of 4) whatever branches are taken, from
``generator`` or torch's global RNG.

Drawing and applying are separate (:meth:`OfficialPhotometric.draw`,
:meth:`OfficialPhotometric.apply`): the draws of one view are a float32 vector of
:data:`NUM_PARAMS` numbers, so a loader worker can draw them and a batched implementation on
the training device (:mod:`detcon.data.device_augment`) can apply them. Layout (``PARAM_*``
indices):

====== ================= ==========================================================
index  name              value
====== ================= ==========================================================
0-3    ``PARAM_APPLY``   1.0 where brightness / contrast / saturation / hue runs (the
                         jitter coin came up and the op's strength is > 0), else 0.0
4      ``PARAM_BRIGHT``  brightness delta
5      ``PARAM_CONTRAST`` contrast factor
6      ``PARAM_SAT``     saturation factor
7      ``PARAM_HUE``     hue delta (turns)
8-11   ``PARAM_ORDER``   the jitter order: entry j is the op (0 brightness, 1 contrast,
                         2 saturation, 3 hue) applied j-th
12     ``PARAM_GRAY``    1.0 = grayscale
13     ``PARAM_BLUR``    1.0 = blur
14     ``PARAM_SIGMA``   blur sigma
15     ``PARAM_SOLARIZE`` 1.0 = solarize (threshold 0.5)
====== ================= ==========================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "to_grayscale",
    "gaussian_kernel",
    "gaussian_blur",
    "solarize",
    "OfficialPhotometric",
    "NUM_PARAMS",
    "PARAM_APPLY",
    "PARAM_BRIGHT",
    "PARAM_CONTRAST",
    "PARAM_SAT",
    "PARAM_HUE",
    "PARAM_ORDER",
    "PARAM_GRAY",
    "PARAM_BLUR",
    "PARAM_SIGMA",
    "PARAM_SOLARIZE",
]

LUMA = (0.2989, 0.5870, 0.1140)  # rec601, dm_pix / TensorFlow grayscale weights

# Layout of one view's drawn parameters (see the module docstring).
PARAM_APPLY = slice(0, 4)  # per jitter op: 1.0 = runs
PARAM_BRIGHT, PARAM_CONTRAST, PARAM_SAT, PARAM_HUE = 4, 5, 6, 7  # the four op values
PARAM_ORDER = slice(8, 12)  # op applied at position j (0..3)
PARAM_GRAY, PARAM_BLUR, PARAM_SIGMA, PARAM_SOLARIZE = 12, 13, 14, 15
NUM_PARAMS = 16


def adjust_brightness(x: torch.Tensor, delta: float) -> torch.Tensor:
    """``x + delta`` (unclipped). x: float ``[..., 3, H, W]``."""
    return x + delta


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * (x - mean) + mean``, mean over H, W per channel (unclipped)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)  # [..., 3, 1, 1]
    return (x - mean).mul_(factor).add_(mean)


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB ``[..., 3, H, W]`` in [0, 1] -> hue, saturation, value planes ``[..., H, W]`` in [0, 1].

    Hue is in turns (1 = 360 degrees); 0 where max == min; saturation 0 where value == 0.
    """
    r, g, b = x.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    rng = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.where(v > 0, rng / torch.where(v > 0, v, 1.0), 0.0)
    norm = 1.0 / (6.0 * torch.where(rng > 0, rng, 1.0))
    h = torch.where(v == g, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0)
    h = torch.where(v == r, norm * (g - b), h)
    h = torch.where(rng > 0, h, 0.0) + (h < 0).to(x.dtype)
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hue (wrapping, in turns), saturation, value planes ``[..., H, W]`` -> RGB ``[..., 3, H, W]``."""
    dh = torch.remainder(h, 1.0) * 6.0
    dr = ((dh - 3.0).abs() - 1.0).clamp_(0.0, 1.0)
    dg = (2.0 - (dh - 2.0).abs()).clamp_(0.0, 1.0)
    db = (2.0 - (dh - 4.0).abs()).clamp_(0.0, 1.0)
    d = torch.stack((dr, dg, db), dim=-3)  # [..., 3, H, W]
    s, v = s.unsqueeze(-3), v.unsqueeze(-3)
    return v * (1.0 - s + s * d)


def adjust_hue(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Shift the HSV hue by ``delta`` turns (mod 1); saturation and value kept."""
    h, s, v = rgb_to_hsv(x)
    return hsv_to_rgb(h + delta, s, v)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """HSV saturation times ``factor``, clipped to [0, 1]; hue and value kept.

    Closed form of the HSV round trip: with v = max_c x, m = min_c x,
    ``x' = v - min(factor, v / (v - m)) * (v - x)`` (unchanged where v == m).
    """
    v = x.amax(dim=-3, keepdim=True)  # [..., 1, H, W]
    rng = v - x.amin(dim=-3, keepdim=True)
    k = torch.where(rng > 0, torch.clamp(v / torch.where(rng > 0, rng, 1.0), max=factor), 0.0)
    return v - k * (v - x)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (rec601) replicated over three channels: ``[..., 3, H, W]``."""
    r, g, b = x.unbind(-3)
    y = LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
    return y.unsqueeze(-3).expand_as(x).contiguous()


def gaussian_kernel(sigma: float, kernel_size: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, float32 ``[2 * int(kernel_size / 2) + 1]`` (dm_pix's rounding)."""
    radius = int(kernel_size / 2)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2.0 * float(sigma) ** 2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[3, H, W]`` or ``[B, 3, H, W]`` with zero ('SAME') padding."""
    k = gaussian_kernel(sigma, kernel_size).to(x.dtype)
    r, c = k.numel() // 2, x.shape[-3]
    y = x.reshape(-1, c, *x.shape[-2:])  # [B, 3, H, W]
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)
    return y.reshape(x.shape)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``x`` where ``x < threshold``, else ``1 - x``."""
    return torch.where(x < threshold, x, 1.0 - x)


class OfficialPhotometric:
    """One view's official colour pipeline: float32 ``[3, H, W]`` in [0, 1] -> same, in [0, 1].

    Args:
        blur_p, solarize_p: this view's probabilities (official view a 1.0 / 0.0, b 0.1 / 0.2).
        jitter_p, gray_p: colour-jitter block and grayscale probabilities (0.8, 0.2).
        brightness, contrast, saturation, hue: jitter strengths (0.4, 0.4, 0.2, 0.1).
        sigma: blur sigma range (0.1, 2.0).
        blur_divider: kernel size = H / blur_divider (10).
    """

    def __init__(
        self,
        blur_p: float,
        solarize_p: float,
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        sigma: tuple[float, float] = (0.1, 2.0),
        blur_divider: float = 10.0,
    ):
        self.blur_p, self.solarize_p, self.jitter_p, self.gray_p = (
            blur_p,
            solarize_p,
            jitter_p,
            gray_p,
        )
        self.strength = (brightness, contrast, saturation, hue)
        self.sigma, self.blur_divider = sigma, blur_divider

    def draw(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """This view's random parameters: float32 ``[NUM_PARAMS]`` (layout in the module
        docstring). Always draws 9 uniforms, then one permutation of 4, from ``generator`` (or
        torch's global RNG), whatever branches are taken."""
        u = torch.rand(9, generator=generator).tolist()
        order = torch.randperm(4, generator=generator).tolist()
        b, c, s, h = self.strength
        jitter = u[0] < self.jitter_p
        p = [0.0] * NUM_PARAMS
        p[PARAM_APPLY] = [float(jitter and v > 0) for v in self.strength]
        p[PARAM_BRIGHT] = -b + 2 * b * u[2]  # brightness delta ~ U[-b, b)
        p[PARAM_CONTRAST] = 1 - c + 2 * c * u[3]  # contrast factor ~ U[1-c, 1+c)
        p[PARAM_SAT] = 1 - s + 2 * s * u[4]  # saturation factor ~ U[1-s, 1+s)
        p[PARAM_HUE] = -h + 2 * h * u[5]  # hue delta ~ U[-h, h)
        p[PARAM_ORDER] = [float(i) for i in order]
        p[PARAM_GRAY] = float(u[1] < self.gray_p)
        p[PARAM_BLUR] = float(u[6] < self.blur_p)
        p[PARAM_SIGMA] = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[7]
        p[PARAM_SOLARIZE] = float(u[8] < self.solarize_p)
        return torch.tensor(p, dtype=torch.float32)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Apply drawn ``params`` (from :meth:`draw`) to a float ``[3, H, W]`` image in [0, 1]:
        a new tensor in [0, 1] (the input is never modified)."""
        if x.dim() != 3 or x.shape[0] != 3 or not x.is_floating_point():
            raise ValueError(f"expected a float [3, H, W] image, got {x.dtype} {tuple(x.shape)}")
        if params.shape != (NUM_PARAMS,):
            raise ValueError(f"expected [{NUM_PARAMS}] parameters, got {tuple(params.shape)}")
        p = params.tolist()
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        values = p[PARAM_BRIGHT : PARAM_HUE + 1]
        apply = p[PARAM_APPLY]
        for i in (int(v) for v in p[PARAM_ORDER]):
            if apply[i]:
                x = ops[i](x, values[i]).clamp_(0.0, 1.0)
        if p[PARAM_GRAY]:
            x = to_grayscale(x).clamp_(0.0, 1.0)
        if p[PARAM_BLUR]:
            x = gaussian_blur(x, p[PARAM_SIGMA], x.shape[-2] / self.blur_divider)
        if p[PARAM_SOLARIZE]:
            x = solarize(x, 0.5)
        return x.clamp(0.0, 1.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != 3 or not x.is_floating_point():
            raise ValueError(f"expected a float [3, H, W] image, got {x.dtype} {tuple(x.shape)}")
        return self.apply(x, self.draw(generator))

    def __repr__(self) -> str:
        return f"OfficialPhotometric(blur_p={self.blur_p}, solarize_p={self.solarize_p})"
