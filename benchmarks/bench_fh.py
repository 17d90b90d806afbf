"""Felzenszwalb-Huttenlocher: ``detcon.masks.fh_fast`` against ``skimage.segmentation.felzenszwalb``.

One thread (both implementations are single-threaded; the thread pools are pinned to 1 anyway),
the official DetCon parameters (scale=1000, sigma=0.8, min_size=1000, full resolution, RGB
uint8), implementations alternated image by image. Image sets:

* ``sk@140k`` / ``sk:native``: the photographs bundled with scikit-image, resized to about
  140k pixels (ImageNet's average) and at their native sizes;
* ``cv@140k`` / ``cv:native``: the real photographs among Debian ``opencv-doc``'s example data;
* ``wall:native``: Debian ``mate-backgrounds`` nature wallpapers (1.3 to 4.9 megapixels).

The Debian images are fetched with ``benchmarks/scenes.py``'s ``fetch_packages`` into
``benchmarks/.cache`` (git-ignored); without apt they are skipped with a warning.

Printed per set: images/s per core for scikit-image and for ``felzenszwalb_fast`` with
``ties="numpy"`` (default, bit-identical) and ``ties="stable"`` (radix sort), speed-up ratios,
the rate of identical label maps and the minimum pixel agreement (fraction of pixels in the
best-matching segment). Also: numba compile time (cold cache) and cache-load time, each in a
fresh subprocess, and the peak memory (RSS increase over the warmed-up process) per megapixel
of one call on the largest image, in a subprocess per implementation.

    python benchmarks/bench_fh.py [--quick] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OFFICIAL = {"scale": 1000, "sigma": 0.8, "min_size": 1000}
TARGET_PIXELS = 140_000
SKIMAGE_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "camera",
    "coins",
    "moon",
)


# --------------------------------------------------------------------------- images
def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img.astype(np.uint8))


def resize_to(img: np.ndarray, pixels: int = TARGET_PIXELS) -> np.ndarray:
    h, w = img.shape[:2]
    f = (pixels / (h * w)) ** 0.5
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def skimage_photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    out = []
    for name in SKIMAGE_NAMES:
        try:
            img = getattr(skimage.data, name)()
        except Exception as err:  # some need a download
            print(f"warning: skimage.data.{name} unavailable ({err}), skipped", file=sys.stderr)
            continue
        img = img[0] if isinstance(img, tuple) else img
        out.append((name, _rgb(img)))
    return out


def debian_photos(wallpapers: bool) -> tuple[list, list]:
    """(opencv-doc photos, wallpapers), native size; empty lists when apt is unavailable."""
    sys.path.insert(0, str(HERE))
    try:
        import scenes

        pkgs = ("opencv-doc", "mate-backgrounds") if wallpapers else ("opencv-doc",)
        root = scenes.fetch_packages(packages=pkgs)
    except Exception as err:
        print(f"warning: Debian photos unavailable ({err}), skipped", file=sys.stderr)
        return [], []
    finally:
        sys.path.pop(0)

    def load(paths):
        out = []
        for p in paths:
            if p.is_file():
                with Image.open(p) as im:
                    out.append((p.name, np.asarray(im.convert("RGB"))))
        return out

    cv = load([root / scenes.OPENCV_DIR / n for n in scenes.OPENCV_PHOTOS])
    wall = load(sorted((root / scenes.WALLPAPER_DIR).glob("*.jpg"))) if wallpapers else []
    return cv, wall


# --------------------------------------------------------------------------- metrics
def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(a.ravel().astype(np.int64) * (int(b.max()) + 1) + b.ravel())
    return pairs.size == np.unique(a).size == np.unique(b).size


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels in the best-matching segment, the smaller of both directions."""
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    codes, counts = np.unique(a.ravel().astype(np.int64) * nb + b.ravel(), return_counts=True)
    ia, ib = codes // nb, codes % nb
    best_a = np.zeros(na, np.int64)
    best_b = np.zeros(nb, np.int64)
    np.maximum.at(best_a, ia, counts)
    np.maximum.at(best_b, ib, counts)
    return float(min(best_a.sum(), best_b.sum()) / a.size)


# --------------------------------------------------------------------------- timing
def run_set(name, images, repeats, fast, sk):
    methods = {
        "skimage": lambda im: sk(im, **OFFICIAL),
        "fast": lambda im: fast(im, ties="numpy", **OFFICIAL),
        "stable": lambda im: fast(im, ties="stable", **OFFICIAL),
    }
    times = {m: [] for m in methods}
    identical = {"fast": 0, "stable": 0}
    partition = {"fast": 0, "stable": 0}
    agreement = {"fast": 1.0, "stable": 1.0}
    pixels = 0
    per_image = []
    for img_name, img in images:
        pixels += img.shape[0] * img.shape[1]
        outs = {}
        best = {}
        for _ in range(repeats):  # alternate implementations image by image
            for m, f in methods.items():
                t0 = time.perf_counter()
                outs[m] = f(img)
                dt = time.perf_counter() - t0
                best[m] = min(best.get(m, dt), dt)
        row = {
            "image": img_name,
            "shape": list(img.shape[:2]),
            "segments": int(outs["skimage"].max()) + 1,
        }
        for m in methods:
            times[m].append(best[m])
            row[f"{m}_s"] = best[m]
        for m in ("fast", "stable"):
            eq = bool(np.array_equal(outs[m], outs["skimage"]))
            sp = eq or same_partition(outs[m], outs["skimage"])
            ag = 1.0 if sp else pixel_agreement(outs[m], outs["skimage"])
            identical[m] += eq
            partition[m] += sp
            agreement[m] = min(agreement[m], ag)
            row[f"{m}_identical"] = eq
            row[f"{m}_agreement"] = ag
        per_image.append(row)
    n = len(images)
    res = {"set": name, "images": n, "megapixels_mean": pixels / n / 1e6}
    for m in methods:
        res[f"{m}_img_per_s"] = n / sum(times[m])
    for m in ("fast", "stable"):
        res[f"{m}_ratio"] = res[f"{m}_img_per_s"] / res["skimage_img_per_s"]
        res[f"{m}_identical_rate"] = identical[m] / n
        res[f"{m}_same_partition_rate"] = partition[m] / n
        res[f"{m}_min_agreement"] = agreement[m]
    res["per_image"] = per_image
    return res


# --------------------------------------------------------------------------- subprocesses
_COMPILE = """
import time, numpy as np
t0 = time.perf_counter()
from detcon.masks.fh_fast import felzenszwalb_fast
t1 = time.perf_counter()
img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
felzenszwalb_fast(img, ties="numpy"); t2 = time.perf_counter()
felzenszwalb_fast(img, ties="stable"); t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""

_MEMORY = """
import sys, numpy as np


def status(key):  # kB; VmHWM is per address space (unlike ru_maxrss, not inherited on exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


method = sys.argv[1]
img = np.load(sys.argv[2])
if method == "skimage":
    from skimage.segmentation import felzenszwalb as f
    kw = {}
else:
    from detcon.masks.fh_fast import felzenszwalb_fast as f
    kw = {"ties": method}
f(np.zeros((32, 32, 3), np.uint8), **kw)  # imports, numba cache load
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS
except OSError:
    pass
base = status("VmRSS")
f(img, scale=1000, sigma=0.8, min_size=1000, **kw)
print((status("VmHWM") - base) / 1024.0)
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def compile_times() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = _env()
        env["NUMBA_CACHE_DIR"] = cache
        out = {}
        for label in ("cold", "cached"):
            res = subprocess.run(
                [sys.executable, "-c", _COMPILE],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            imp, first_numpy, first_stable = map(float, res.stdout.split())
            out[label] = {
                "import_s": imp,
                "first_call_s": first_numpy,
                "stable_first_s": first_stable,
            }
    return out


def peak_memory(img: np.ndarray) -> dict:
    mp = img.shape[0] * img.shape[1] / 1e6
    out = {"image_megapixels": mp}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "img.npy")
        np.save(path, img)
        for method in ("skimage", "numpy", "stable"):
            res = subprocess.run(
                [sys.executable, "-c", _MEMORY, method, path],
                env=_env(),
                capture_output=True,
                text=True,
                check=True,
            )
            out[f"{method}_MiB_per_MP"] = float(res.stdout.strip()) / mp
    return out


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="timed runs per image (best kept)")
    p.add_argument("--quick", action="store_true", help="no wallpapers, 1 repeat, no opencv native")
    p.add_argument("--no-debian", action="store_true", help="only scikit-image's photos")
    p.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats

    sys.path.insert(0, str(ROOT / "src"))
    from skimage.segmentation import felzenszwalb

    from detcon.masks.fh_fast import available, felzenszwalb_fast

    if not available():
        print("numba is not importable: felzenszwalb_fast falls back to scikit-image")
    comp = compile_times()
    t0 = time.perf_counter()
    felzenszwalb_fast(np.zeros((8, 8, 3), np.uint8))
    felzenszwalb_fast(np.zeros((8, 8, 3), np.uint8), ties="stable")
    warm = time.perf_counter() - t0

    sk = skimage_photos()
    cv, wall = ([], []) if args.no_debian else debian_photos(wallpapers=not args.quick)
    sets = [("sk@140k", [(n, resize_to(im)) for n, im in sk]), ("sk:native", sk)]
    if cv:
        sets.append(("cv@140k", [(n, resize_to(im)) for n, im in cv]))
        if not args.quick:
            sets.append(("cv:native", cv))
    if wall:
        sets.append(("wall:native", wall))

    results = []
    for name, images in sets:
        print(f"running {name}: {len(images)} images ...", file=sys.stderr, flush=True)
        results.append(run_set(name, images, repeats, felzenszwalb_fast, felzenszwalb))

    largest = max((im for _, images in sets for _, im in images), key=lambda a: a.size)
    mem = peak_memory(largest)

    hdr = (
        f"{'set':<12}{'n':>4}{'MP':>6}{'skimage/s':>11}{'fast/s':>9}{'x':>6}{'ident':>7}"
        f"{'minagr':>9}{'stable/s':>10}{'x':>6}{'ident':>7}{'minagr':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(
            f"{r['set']:<12}{r['images']:>4}{r['megapixels_mean']:>6.2f}"
            f"{r['skimage_img_per_s']:>11.2f}{r['fast_img_per_s']:>9.2f}{r['fast_ratio']:>6.2f}"
            f"{r['fast_identical_rate']:>7.0%}{r['fast_min_agreement']:>9.5f}"
            f"{r['stable_img_per_s']:>10.2f}{r['stable_ratio']:>6.2f}"
            f"{r['stable_identical_rate']:>7.0%}{r['stable_min_agreement']:>9.5f}"
        )
    print(
        "images/s per core (one thread, best of "
        f"{repeats}); fast = ties='numpy' (default), stable = ties='stable'; "
        "ident = identical label maps; minagr = min pixel agreement"
    )
    print(
        f"numba: cold compile first call {comp['cold']['first_call_s']:.1f} s "
        f"(+{comp['cold']['stable_first_s']:.1f} s for the stable sort), cached "
        f"{comp['cached']['first_call_s']:.2f} s (+{comp['cached']['stable_first_s']:.2f} s); "
        f"this process {warm:.2f} s"
    )
    print(
        f"peak RSS increase per megapixel ({mem['image_megapixels']:.1f} MP image): skimage "
        f"{mem['skimage_MiB_per_MP']:.0f} MiB, fast {mem['numpy_MiB_per_MP']:.0f} MiB, "
        f"stable {mem['stable_MiB_per_MP']:.0f} MiB"
    )
    if args.json:
        import numba
        import skimage

        write_json_atomic(
            args.json,
            {
                "params": OFFICIAL,
                "repeats": repeats,
                "versions": {
                    "numpy": np.__version__,
                    "skimage": skimage.__version__,
                    "numba": numba.__version__,
                },
                "compile": comp,
                "memory": mem,
                "sets": results,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
