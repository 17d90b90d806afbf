"""Mask generation speed on real photographs: FH through detcon vs skimage's own function.

Measures, on the same decoded images and the same parameters (official scale=1000,
sigma=0.8, min_size=1000):

* ``skimage``: ``skimage.segmentation.felzenszwalb`` called directly (one process);
* ``ours full-res``: ``FHGenerator()`` (exact official masks, contiguous int32 ids);
* ``ours max_side=S``: reduced-resolution mode (FH at longer side S, nearest upsampling) and its
  agreement with full resolution (purity: fraction of pixels whose reduced segment's majority
  full-res segment is their own);
* ``detcon masks`` end to end (decode + FH + compressed atomic write) with 1 and N workers.

Images: scikit-image's bundled photographs plus the photographs of Debian's ``opencv-doc``
package (downloaded with ``apt-get download`` into ``benchmarks/.cache``; skipped with a
message when unavailable). Usage::

    python benchmarks/bench_masks.py [--json FILE] [--workers 2] [--max-images 24]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenes  # noqa: E402  (the one Debian package fetcher of the benchmarks)

OPENCV_PHOTOS = [
    "aero1.jpg",
    "aloeL.jpg",
    "apple.jpg",
    "baboon.jpg",
    "board.jpg",
    "building.jpg",
    "butterfly.jpg",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "HappyFish.jpg",
    "home.jpg",
    "left.jpg",
    "leuvenA.jpg",
    "licenseplate_motion.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "squirrel_cls.jpg",
    "starry_night.jpg",
]


def fetch_opencv_photos() -> list[Path]:
    """Photographs from Debian's opencv-doc (fetched once by ``scenes.fetch_packages`` into
    ``benchmarks/.cache``), or [] with a note when apt cannot fetch it."""
    try:
        root = scenes.fetch_packages(packages=("opencv-doc",))
    except (OSError, RuntimeError) as err:
        print(f"note: opencv-doc photos unavailable ({err}); using scikit-image photos only")
        return []
    data = root / "usr/share/doc/opencv-doc/examples/data"
    return [data / n for n in OPENCV_PHOTOS if (data / n).is_file()]


def benchmark_images(max_images: int = 24) -> list[Path]:
    """scikit-image photographs first, then opencv-doc photographs, at most ``max_images``."""
    from detcon.data.builtin import builtin_images

    return (builtin_images() + fetch_opencv_photos())[:max_images]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, python {platform.python_version()}"


def timed(fn, images) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    out = [fn(im) for im in images]
    return time.perf_counter() - start, out


def purity(reduced: np.ndarray, full: np.ndarray) -> float:
    """Fraction of pixels whose reduced-mode segment maps (by majority) to their full segment."""
    pair = reduced.astype(np.int64) * (int(full.max()) + 1) + full
    counts = np.bincount(pair.ravel())
    nz = np.nonzero(counts)[0]
    best = np.zeros(int(reduced.max()) + 1, dtype=np.int64)
    np.maximum.at(best, nz // (int(full.max()) + 1), counts[nz])
    return float(best.sum() / full.size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this JSON file")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-images", type=int, default=24)
    parser.add_argument("--max-side", type=int, nargs="+", default=[384, 256])
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from skimage.segmentation import felzenszwalb

    from detcon.commands.masks import generate_masks
    from detcon.data.decode import load_rgb_array
    from detcon.masks.cache import MaskCache
    from detcon.masks.generators import FHGenerator

    files = benchmark_images(args.max_images)
    images = [load_rgb_array(f) for f in files]
    mpx = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    print(
        f"{len(images)} photographs, {mpx:.1f} Mpx total, median side "
        f"{int(np.median([max(im.shape[:2]) for im in images]))} px; {machine()}"
    )

    rows = []

    def add(name, seconds, n=None, workers=1, maps=None, agree=None):
        n = len(images) if n is None else n
        row = {
            "method": name,
            "workers": workers,
            "images": n,
            "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 3),
            "images_per_s_per_core": round(n / seconds / workers, 3),
        }
        if maps is not None:
            row["segments_median"] = float(np.median([int(m.max()) + 1 for m in maps]))
        if agree is not None:
            row["purity_vs_full"] = round(agree, 4)
        rows.append(row)
        extra = f"  purity vs full-res {agree:.3f}" if agree is not None else ""
        print(
            f"  {name:<34} {row['images_per_s_per_core']:>8.2f} img/s/core  ({seconds:.1f} s){extra}"
        )

    t, ref = timed(lambda im: felzenszwalb(im, scale=1000, sigma=0.8, min_size=1000), images)
    add("skimage felzenszwalb (direct)", t, maps=ref)
    t, full = timed(FHGenerator(), images)
    assert all(np.array_equal(a, b) for a, b in zip(full, ref, strict=True)), "ours != skimage"
    add("ours FHGenerator full-res (exact)", t, maps=full)
    for side in args.max_side:
        t, red = timed(FHGenerator(max_side=side), images)
        agree = float(np.mean([purity(r, f) for r, f in zip(red, full, strict=True)]))
        add(f"ours FHGenerator max_side={side}", t, maps=red, agree=agree)

    tmp = Path(tempfile.mkdtemp(prefix="bench_masks_"))
    try:
        for workers in sorted({1, args.workers}):
            for side in (None, args.max_side[-1]):
                gen = FHGenerator(max_side=side)
                cache = MaskCache(tmp / f"w{workers}-{side}", gen)
                stats = generate_masks(files, gen, cache, workers=workers, progress=False)
                label = "full-res" if side is None else f"max_side={side}"
                add(f"detcon masks {label}, {workers} proc", stats.seconds, workers=workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
