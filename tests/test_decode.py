"""load_image on every awkward input class: each decodes to 8-bit RGB or raises DecodeError."""

import io

import numpy as np
import pytest
from PIL import Image

from detcon.data.decode import DecodeError, load_image
from detcon.data.transforms import TwoViewTransform
from detcon.masks.generators import FHGenerator


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.png", b"hello, I am not an image\n" * 10, "not an image"),
        (
            "random.jpg",
            bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
            "not an image",
        ),
    ],
)
def test_bad_files_raise_one_line_decode_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason) as info:
        load_image(path)
    assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_and_corrupt_files(tmp_path, fmt):
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    data = buf.getvalue()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        load_image(tmp_path / "cut")
    broken = bytearray(data)
    broken[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64  # header fine, data broken
    (tmp_path / "bad").write_bytes(bytes(broken))
    if fmt == "PNG":  # JPEG decoders often conceal damaged blocks; PNG has CRCs
        with pytest.raises(DecodeError):
            load_image(tmp_path / "bad")


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="cannot read"):
        load_image(tmp_path / "nope.jpg")


def _check_rgb(img, size):
    assert img.mode == "RGB" and img.size == size
    return np.asarray(img)


def test_grayscale_and_cmyk(tmp_path):
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    assert (_check_rgb(load_image(tmp_path / "g.png"), (5, 4)) == 77).all()
    Image.new("1", (5, 4), 1).save(tmp_path / "b.png")
    assert (_check_rgb(load_image(tmp_path / "b.png"), (5, 4)) == 255).all()
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    px = _check_rgb(load_image(tmp_path / "c.jpg"), (6, 4))[0, 0].astype(int)
    assert px[0] > 200 and px[1] < 60 and px[2] < 60


def test_16bit_is_rescaled_not_clipped(tmp_path):
    ramp = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(ramp).save(tmp_path / "d.png")  # opens as I;16 (or I)
    out = _check_rgb(load_image(tmp_path / "d.png"), (4, 1))[0, :, 0]
    assert out.tolist() == [0, 1, 128, 255]  # clipping would give [0, 255, 255, 255]


def test_palette_and_alpha_composite_on_white(tmp_path):
    pal = Image.new("RGB", (4, 4), (10, 200, 30)).quantize(4)
    pal.save(tmp_path / "p.png")
    assert _check_rgb(load_image(tmp_path / "p.png"), (4, 4))[0, 0].tolist() == [10, 200, 30]
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red, the rest fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = _check_rgb(load_image(tmp_path / "a.png"), (2, 2))
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    pt = Image.new("P", (2, 1))
    pt.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pt.putpixel((1, 0), 1)
    pt.info["transparency"] = 0
    pt.save(tmp_path / "pt.png", transparency=0)
    out = _check_rgb(load_image(tmp_path / "pt.png"), (2, 1))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 255]
    Image.new("LA", (2, 2), (50, 255)).save(tmp_path / "la.png")
    assert (_check_rgb(load_image(tmp_path / "la.png"), (2, 2)) == 50).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high; red top-left pixel
    arr[0, 0] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.png", exif=exif)
    out = _check_rgb(load_image(tmp_path / "r.png"), (2, 4))  # now 2 wide, 4 high
    assert out[0, 1].tolist() == [255, 0, 0]  # top-left moved to top-right


def test_tiny_image_works_downstream(tmp_path):
    Image.new("RGB", (1, 1), (9, 8, 7)).save(tmp_path / "t.png")
    img = load_image(tmp_path / "t.png")
    labels = FHGenerator()(np.asarray(img))
    assert labels.shape == (1, 1) and labels.max() == 0
    item = TwoViewTransform(16)(img, labels)
    assert item["view_a"].shape == (3, 16, 16) and (item["mask_b"] == 0).all()


def test_large_image_and_pixel_limit(tmp_path):
    Image.new("RGB", (4000, 3000), (1, 2, 3)).save(tmp_path / "big.png")
    img = load_image(tmp_path / "big.png")
    assert img.size == (4000, 3000)
    labels = FHGenerator(max_side=64)(np.asarray(img))  # reduced-resolution mode
    assert labels.shape == (3000, 4000) and labels.max() == 0
    item = TwoViewTransform(16)(img, labels)
    assert item["mask_a"].shape == (16, 16)
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecodeError, match="too large"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)
    assert Image.MAX_IMAGE_PIXELS == limit  # the global knob is restored
