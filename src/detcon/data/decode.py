"""Robust image decoding: every readable photograph becomes an 8-bit RGB ``PIL.Image``.

Handled: EXIF orientation (applied, so pixels are upright), grayscale (``L``, ``1``), 16/32-bit
grayscale (``I;16*``, ``I``, ``F``: rescaled to 8 bit by the type's range, ``>> 8`` for 16 bit,
never clipped), ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` (converted), palette images (``P``,
with or without transparency), and alpha (``RGBA``, ``LA``, ``PA``): **composited on a white
background** (transparent pixels become white rather than whatever colour they hide).

Failures (missing, empty, truncated, corrupt or non-image files) raise :class:`DecodeError`
with a one-line reason.

JPEG draft decoding (:func:`load_image_draft`): libjpeg can decode a JPEG directly at 1/2, 1/4
or 1/8 of its size (PIL's ``Image.draft``), several times faster than a full decode followed by
a downscale. Reduced pixel ``j`` covers original pixels ``[j*s, (j+1)*s)``, so original
coordinate ``u`` is ``u / s`` in the reduced image; the pixels are the DCT's low-pass of the
original (close to an ``s x s`` box average), not the original's pixels.

Large images: PIL refuses images over ``Image.MAX_IMAGE_PIXELS`` (~89 Mpx) as a
decompression-bomb guard. We raise that limit deliberately to :data:`MAX_IMAGE_PIXELS`
(400 Mpx, e.g. 20000x20000), enough for any camera photograph while still refusing absurd
headers; pass ``max_pixels=`` to change it per call.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "DecodeError",
    "load_image",
    "load_image_draft",
    "image_size",
    "load_rgb_array",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
]

#: Pixel limit for decoding (deliberately above PIL's default 89 Mpx guard).
MAX_IMAGE_PIXELS = 400_000_000

#: File name endings treated as images by folder scans (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DecodeError(ValueError):
    """An image file could not be decoded; ``str(err)`` is a one-line reason with the path."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth grayscale -> ``L`` by the value range of its type (not by clipping)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (arr.dtype == np.uint16):
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)  # 0..65535 -> 0..255
    elif img.mode == "I":
        # 32-bit ints: 16-bit PNGs open as "I" in some PIL versions; use the 16-bit range when
        # the data fits, else the data's own range.
        arr = arr.astype(np.int64)
        if arr.min() >= 0 and arr.max() <= 65535:
            out = (arr >> 8).astype(np.uint8)
        else:
            lo, hi = arr.min(), arr.max()
            out = ((arr - lo) * 255 // max(hi - lo, 1)).astype(np.uint8)
    else:  # "F": float data -> its own range
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = arr.min(), arr.max()
        out = np.round((arr - lo) * 255.0 / max(hi - lo, 1e-12)).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _composite_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit ``RGB`` (see module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette and img.palette.mode == "RGBA"
        return _composite_white(img) if has_alpha else img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_white(img)
    if mode.startswith("I") or mode == "F":
        return _to_8bit(img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: str | os.PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``path`` as an upright 8-bit ``RGB`` PIL image.

    Raises:
        DecodeError: missing, empty, truncated, corrupt, non-image or too large file.
    """
    return _decode(path, max_pixels, 1)[0]


def load_image_draft(
    path: str | os.PathLike, scale: int, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[Image.Image, int]:
    """:func:`load_image` at ``1 / s`` of the size for the largest ``s`` in {8, 4, 2} not above
    ``scale``, where the format allows it: ``(image, s)``, ``s = 1`` for a full decode.

    Only baseline single-tile JPEGs are reduced, and only when the image needs no EXIF rotation
    or both sides are multiples of ``s`` (a rotation would move the partial last block to the
    first row or column and shift the ``u / s`` mapping). Raises like :func:`load_image`."""
    return _decode(path, max_pixels, max(1, int(scale)))


def image_size(path: str | os.PathLike) -> tuple[int, int, str | None]:
    """``(height, width, format)`` of the upright image from the header: PIL's format name
    (``"JPEG"``, ``"PNG"``...) and the size with the EXIF orientation applied for JPEGs (whose
    EXIF block is in the header; other formats are not rotated here, so callers should only use
    this size for JPEGs). No pixel is decoded. Raises :class:`DecodeError` like
    :func:`load_image`."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            (w, h), fmt = img.size, img.format
            if fmt == "JPEG" and _orientation(img) in (5, 6, 7, 8):  # transposing orientations
                w, h = h, w
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DecodeError(f"{path}: cannot read the header ({err})") from None
    return h, w, fmt


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no orientation
        return 1


def _draft(img: Image.Image, scale: int) -> int:
    """Ask PIL's JPEG decoder for a ``1/s`` reduced decode; the ``s`` it will use."""
    if scale < 2 or img.format != "JPEG" or len(getattr(img, "tile", ())) != 1:
        return 1
    s = next(f for f in (8, 4, 2, 1) if f <= scale)
    w, h = img.size
    if _orientation(img) not in (1,) and (w % s or h % s):
        return 1
    if s == 1 or w // s < 1 or h // s < 1:
        return 1
    result = img.draft(None, (w // s, h // s))
    if result is None:
        return 1
    return round(w / result[1][2])  # the box PIL reports: (0, 0, w / s, h / s)


def _decode(path, max_pixels, scale: int) -> tuple[Image.Image, int]:
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError(f"{path}: empty file")
    except OSError as err:
        raise DecodeError(f"{path}: cannot read ({err.strerror or err})") from None
    old_limit, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not grey pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                used = _draft(img, scale)
                img.load()
                img = ImageOps.exif_transpose(img)
                out = to_rgb(img)
                out.load()
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(f"{path}: not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError(f"{path}: too large ({err}); raise max_pixels to allow it") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DecodeError(f"{path}: corrupt or truncated ({reason})") from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_limit, old_trunc
    if out.width < 1 or out.height < 1:
        raise DecodeError(f"{path}: zero-sized image")
    return out, used


def load_rgb_array(path: str | os.PathLike) -> np.ndarray:
    """``load_image`` as a ``uint8 [H, W, 3]`` array (the generators' input)."""
    return np.asarray(load_image(path), dtype=np.uint8)
