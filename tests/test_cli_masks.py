"""`detcon masks` and `detcon show` end to end on a tiny folder."""

import json

import numpy as np
import pytest
from PIL import Image

from detcon.cli import main
from detcon.masks.cache import MaskCache


def _data(root):
    rng = np.random.default_rng(0)
    for k, name in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/d.bmp"]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.zeros((64, 64, 3), dtype=np.uint8)
        arr[:, 32:] = (200, 40 * k, 30)
        arr[40:] = (20, 20, 220)
        Image.fromarray(np.clip(arr + rng.integers(0, 4, arr.shape), 0, 255).astype(np.uint8)).save(
            path
        )
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_masks_cli_end_to_end_and_resume(tmp_path, capsys):
    data, out = _data(tmp_path / "data"), tmp_path / "cache"
    args = [
        "masks",
        str(data),
        "--out",
        str(out),
        "--workers",
        "1",
        "--quiet",
        "--fh-scale",
        "100",
        "--fh-min-size",
        "50",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "images: 5  computed: 4  reused: 0  skipped: 1" in text
    assert "segments per image: min" in text and "broken.png" in text
    cache = MaskCache(out)
    assert cache.name == "fh" and cache.params["min_size"] == 50
    maps = {
        p: cache.get(p) for p in sorted(data.rglob("*")) if p.suffix in (".png", ".jpg", ".bmp")
    }
    assert sum(m is not None for m in maps.values()) == 4
    assert main(args) == 0  # resume: everything reused
    assert "computed: 0  reused: 4  skipped: 1" in capsys.readouterr().out
    assert main(args[:-2] + ["--fh-min-size", "20"]) == 0  # changed params: recomputed
    assert "computed: 4  reused: 0" in capsys.readouterr().out


def test_masks_cli_shards_and_methods(tmp_path, capsys):
    data = _data(tmp_path / "data")
    base = [str(data), "--workers", "2", "--quiet", "--method", "grid", "--grid", "2"]
    assert (
        main(["masks", *base, "--out", str(tmp_path / "g"), "--shard", "1", "--num-shards", "2"])
        == 0
    )
    text = capsys.readouterr().out
    assert "2 images" in text and "segments per image: min 4  median 4  max 4" in text
    with pytest.raises(SystemExit, match="coco-json"):
        main(["masks", str(data), "--out", str(tmp_path / "c"), "--method", "coco"])
    with pytest.raises(SystemExit, match="shard"):
        main(["masks", *base, "--out", str(tmp_path / "g"), "--shard", "3", "--num-shards", "2"])
    info = json.loads((tmp_path / "g" / "cache.json").read_text())
    assert info["name"] == "grid" and info["params"] == {"rows": 2, "cols": 2}


def test_masks_cli_writes_any_generator_spec(tmp_path, capsys):
    """--method takes a generator spec too (slic, quickshift, watershed, module:function):
    its name and parameters go into the cache's record (and key)."""
    data = _data(tmp_path / "data")
    out = tmp_path / "slic"
    args = ["masks", str(data), "--out", str(out), "--workers", "1", "--quiet"]
    assert main([*args, "--method", "slic:n_segments=4,compactness=10"]) == 0
    info = json.loads((out / "cache.json").read_text())
    assert info["name"] == "slic" and info["params"]["n_segments"] == 4
    assert "computed: 4" in capsys.readouterr().out
    bad = [*args[:3], str(tmp_path / "x"), *args[4:], "--method", "nope:x=1"]
    assert main(bad) == 2  # one-line error, no traceback
    assert "nope" in capsys.readouterr().err


def test_show_writes_png(tmp_path, capsys):
    data = _data(tmp_path / "data")
    out = tmp_path / "pics" / "show.png"
    assert (
        main(
            [
                "show",
                str(data),
                "--masks",
                "grid",
                "--out",
                str(out),
                "--num",
                "2",
                "--image-size",
                "64",
            ]
        )
        == 0
    )
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert "wrote" in capsys.readouterr().out
