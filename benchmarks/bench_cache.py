"""Mask cache layouts: random-access read rate of the per-file and the packed layout, their write
rates and sizes, and the projected wall time of ImageNet's train set on one 64-core machine.

Maps: full-resolution FH maps (official scale=1000, sigma=0.8, min_size=1000, our kernel) of the
photographs bundled with scikit-image resized to ~140k pixels (ImageNet's average), each stored
under ``--maps`` image keys with a different horizontal roll, so every entry is a distinct,
realistic map. The "images" are small placeholder files (the cache only stats them).

Reading: ``cache.get(path, dtype=None)`` (what the data loader calls) over all keys in a random
order, one process. *cold*: a new cache object after ``posix_fadvise(DONTNEED)`` on every cache
file (drops their pages from the page cache; directory and inode caches stay warm, so this is
"cold-ish" for a local disk and says nothing about a network filesystem); *warm*: the same
object, a second pass. Layouts alternate within each round (A B, then B A) and the medians over
``--rounds`` are reported.

The projection: ``detcon masks --layout packed``'s per-image work in one process (decode a
JPEG + FH + encode + part write) on the photos saved as JPEG (quality 90), alternated with our
FH kernel alone and the decoder alone on the same images, times 64 cores, against 1.28 M
images. Parallel scaling to 64
cores is not measured (this script's machine may have 2); the serial parts of a parallel run
are measured on their own: the parent's part writes (pre-encoded records) and the process
pool's dispatch rate when the per-image work is negligible.

    python benchmarks/bench_cache.py [--maps 3000] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_fh import OFFICIAL, TARGET_PIXELS, resize_to, skimage_photos  # noqa: E402

IMAGENET_TRAIN = 1_281_167
#: (name, packed codec): the per-file layout, packed with zlib (the default), packed raw
LAYOUTS = (("files", None), ("packed", "zlib"), ("packed_raw", "raw"))
CORES = 64


def _evict(paths) -> None:
    """Drop the page-cache pages of ``paths`` (clean pages only; ours are fsynced)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _size(folder: Path) -> tuple[int, int, int]:
    """Files, bytes, bytes allocated on disk (whole blocks) under ``folder``."""
    stats = [p.stat() for p in folder.rglob("*") if p.is_file()]
    return len(stats), sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def build(tmp: Path, maps: list[np.ndarray], n: int, part_size: int) -> dict:
    """Write ``n`` entries in both layouts; returns write rates, sizes and the key paths."""
    from detcon.masks.cache import MaskCache
    from detcon.masks.generators import FHGenerator
    from detcon.masks.packed import PackedMaskCache, PartWriter, encode_map, merge_parts

    gen = FHGenerator(**OFFICIAL)
    img = tmp / "img"
    img.mkdir()
    paths = []
    for i in range(n):
        p = img / f"{i:06d}.jpg"
        p.write_bytes(i.to_bytes(4, "little"))  # a placeholder: the cache only stats it
        paths.append(p)

    def entry(i):
        return np.roll(maps[i % len(maps)], 7 * (i // len(maps)), axis=1)

    out = {"paths": paths}
    files = MaskCache(tmp / "files", gen, data_root=img)
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        files.put(p, entry(i))
    out["files_write_s"] = time.perf_counter() - t0
    out["files_count"], out["files_bytes"], out["files_alloc"] = _size(files.folder)
    for lay, codec in LAYOUTS[1:]:
        packed = PackedMaskCache(tmp / lay, gen, data_root=img)
        t0, c0 = time.perf_counter(), time.process_time()  # each worker's part (in parallel)
        records = [
            encode_map(packed.key(p), entry(i), os.stat(p), codec) for i, p in enumerate(paths)
        ]
        out[f"{lay}_encode_s"] = time.perf_counter() - t0
        out[f"{lay}_encode_cpu_s"] = time.process_time() - c0
        t0 = time.perf_counter()  # what the one parent process does: append, commit, merge
        for j in range(0, n, part_size):
            chunk = paths[j : j + part_size]
            w = PartWriter(
                packed.folder,
                j // part_size,
                -(-n // part_size),
                gen.name,
                gen.params,
                [packed.key(p) for p in chunk],
            )
            for rec in records[j : j + part_size]:
                w.add(rec)
            w.commit()
        merge_parts(packed.folder)
        out[f"{lay}_write_s"] = time.perf_counter() - t0
        out[f"{lay}_count"], out[f"{lay}_bytes"], out[f"{lay}_alloc"] = _size(packed.folder)
    out["gen"], out["img"] = gen, img
    for lay, _ in LAYOUTS[1:]:  # the layouts must hold the same maps
        check = PackedMaskCache(tmp / lay, gen, data_root=img)
        for i in range(0, n, max(1, n // 50)):
            assert np.array_equal(check.get(paths[i]), files.get(paths[i])), paths[i]
    return out


def read_pass(cache, order, paths) -> float:
    t0 = time.perf_counter()
    for i in order:
        if cache.get(paths[i], dtype=None) is None:
            raise RuntimeError(f"{paths[i]}: missing from {cache}")
    return len(order) / (time.perf_counter() - t0)


def read_rates(tmp: Path, built: dict, rounds: int, seed: int) -> dict:
    from detcon.masks.cache import MaskCache
    from detcon.masks.packed import PackedMaskCache

    paths, gen, img = built["paths"], built["gen"], built["img"]
    files_on_disk = {lay: [p for p in (tmp / lay).rglob("*") if p.is_file()] for lay, _ in LAYOUTS}
    make = {
        "files": lambda: MaskCache(tmp / "files", gen, data_root=img),
        "packed": lambda: PackedMaskCache(tmp / "packed", gen, data_root=img),
        "packed_raw": lambda: PackedMaskCache(tmp / "packed_raw", gen, data_root=img),
    }
    rates = {f"{lay}_{kind}": [] for lay in make for kind in ("cold", "warm")}
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        order = rng.permutation(len(paths))
        names = [lay for lay, _ in LAYOUTS]
        for lay in names if r % 2 == 0 else names[::-1]:  # A B C, then C B A
            _evict(files_on_disk[lay])
            cache = make[lay]()
            rates[f"{lay}_cold"].append(read_pass(cache, order, paths))
            rates[f"{lay}_warm"].append(read_pass(cache, rng.permutation(len(paths)), paths))
    return rates


def fh_and_end_to_end(tmp: Path, photos, copies: int, rounds: int) -> dict:
    """Alternated, one process: our FH kernel on the decoded photos, and ``detcon masks
    --layout packed``'s per-image work (decode the JPEG + FH + encode + part write) on the same
    photos saved as JPEG (``copies`` files each). Images/s per round, of wall time and (keys
    ``*_cpu``) of this process's CPU time: on a shared machine the CPU-time rate is what a
    dedicated core would do (up to cache and clock effects), the wall rate what this one did."""
    from detcon.commands.masks import generate_packed
    from detcon.masks.fh_fast import felzenszwalb_fast
    from detcon.masks.generators import FHGenerator
    from detcon.masks.packed import PackedMaskCache

    data = tmp / "jpeg"
    data.mkdir()
    paths = []
    for c in range(copies):
        for k, img in enumerate(photos):
            p = data / f"{c:03d}_{k:02d}.jpg"
            Image.fromarray(img).save(p, quality=90)
            paths.append(p)
    gen = FHGenerator(**OFFICIAL)
    felzenszwalb_fast(photos[0], **OFFICIAL)  # numba: compile or load its cache

    from detcon.data.decode import load_image

    decoded = [np.asarray(load_image(p)) for p in paths]  # FH on what the run segments

    def timed(fn):
        """(images/s of wall time, images/s of this process's CPU time)."""
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return len(paths) / (time.perf_counter() - t0), len(paths) / (time.process_time() - c0)

    def kernel():
        for img in decoded:
            felzenszwalb_fast(img, **OFFICIAL)

    def decode():
        for p in paths:
            np.asarray(load_image(p))

    def end_to_end():
        cache = PackedMaskCache(tmp / f"e2e{len(list(tmp.glob('e2e*')))}", gen, data_root=data)
        stats = generate_packed(sorted(paths), gen, cache, part_size=64, progress=False)
        assert stats.computed == len(paths), stats.summary()

    runs = {"fh": kernel, "decode": decode, "end_to_end": end_to_end}
    out = {name: [] for name in runs}
    out.update({f"{name}_cpu": [] for name in runs})
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            wall, cpu = timed(runs[name])
            out[name].append(wall)
            out[f"{name}_cpu"].append(cpu)
    return out


def dispatch_rate(tmp: Path, n: int, workers: int) -> dict:
    """Images/s through ``detcon masks --layout packed``'s process pool when the per-image
    work is negligible (8x8 images, grid maps): what the parent (task dispatch, results,
    part writes) sustains with ``workers`` processes on this machine's cores. The marginal
    rate of a run of ``2n`` images over one of ``n``, so the pool's start-up (each worker
    imports the decoder) is not counted."""
    from detcon.commands.masks import generate_packed
    from detcon.masks.generators import GridGenerator
    from detcon.masks.packed import PackedMaskCache

    data = tmp / "tiny"
    data.mkdir()
    arr = np.zeros((8, 8, 3), np.uint8)
    paths = []
    for i in range(2 * n):
        p = data / f"{i:06d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    gen = GridGenerator(2)
    seconds, cpu = [], []
    for k in (1, 2):
        cache = PackedMaskCache(tmp / f"tiny_cache{k}", gen, data_root=data)
        c0 = time.process_time()  # this (the parent) process only
        stats = generate_packed(
            paths[: k * n], gen, cache, part_size=1024, workers=workers, progress=False
        )
        cpu.append(time.process_time() - c0)
        assert stats.computed == k * n, stats.summary()
        seconds.append(stats.seconds)
    return {
        "img_per_s": n / max(seconds[1] - seconds[0], 1e-9),
        "parent_cpu_us_per_img": (cpu[1] - cpu[0]) / n * 1e6,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--maps", type=int, default=3000, help="entries per layout")
    ap.add_argument("--rounds", type=int, default=3, help="alternated read rounds")
    ap.add_argument("--part-size", type=int, default=1024, help="packed: maps per part")
    ap.add_argument("--copies", type=int, default=3, help="FH / end-to-end: copies per photo")
    ap.add_argument("--dispatch", type=int, default=3000, help="tiny images for the pool rate")
    ap.add_argument("--workers", type=int, default=2, help="processes for the pool rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the temporary caches (removed)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from detcon.masks.fh_fast import felzenszwalb_fast

    photos = [resize_to(img, TARGET_PIXELS) for _, img in skimage_photos()]
    maps = [felzenszwalb_fast(p, **OFFICIAL) for p in photos]
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_", dir=args.tmp))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # none expected; keep the table readable
            built = build(tmp, maps, args.maps, args.part_size)
            rates = read_rates(tmp, built, args.rounds, args.seed)
            speed = fh_and_end_to_end(tmp, photos, args.copies, args.rounds)
            dispatch = dispatch_rate(tmp, args.dispatch, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.maps
    med = {k: statistics.median(v) for k, v in rates.items()}
    res = {
        "maps": n,
        "rounds": args.rounds,
        "part_size": args.part_size,
        "map_pixels_mean": float(np.mean([m.size for m in maps])),
        "read_maps_per_s": rates,
        "read_median": med,
        "over_files": {
            lay: {k: med[f"{lay}_{k}"] / med[f"files_{k}"] for k in ("cold", "warm")}
            for lay in ("packed", "packed_raw")
        },
        "write_maps_per_s": {lay: n / built[f"{lay}_write_s"] for lay, _ in LAYOUTS},
        "disk": {
            lay: {
                k: built[f"{lay}_{k2}"]
                for k, k2 in (("files", "count"), ("bytes", "bytes"), ("allocated", "alloc"))
            }
            for lay, _ in LAYOUTS
        },
        "encode_maps_per_s_per_core": n / built["packed_encode_s"],
        "encode_maps_per_s_per_core_cpu": n / built["packed_encode_cpu_s"],
        "per_core_img_per_s": speed,
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "pool_dispatch": dispatch,
        "dispatch_workers": args.workers,
    }
    rate = {k: statistics.median(v) for k, v in speed.items()}
    packed_write = res["write_maps_per_s"]["packed"]
    proj = {
        f"{name}{kind}_min": IMAGENET_TRAIN / (rate[name + kind] * CORES) / 60
        for name in ("fh", "end_to_end")
        for kind in ("", "_cpu")
    }
    proj.update(
        parent_part_writes_min=IMAGENET_TRAIN / packed_write / 60,
        parent_cpu_min=IMAGENET_TRAIN * dispatch["parent_cpu_us_per_img"] / 1e6 / 60,
        imagenet_packed_gb=built["packed_bytes"] / n * IMAGENET_TRAIN / 1e9,
        imagenet_files_gb=built["files_bytes"] / n * IMAGENET_TRAIN / 1e9,
        imagenet_files_allocated_gb=built["files_alloc"] / n * IMAGENET_TRAIN / 1e9,
    )
    res["projection_64_cores"] = proj

    print(f"{n} FH maps of {res['map_pixels_mean'] / 1e3:.0f}k px, {args.rounds} rounds (medians)")
    print(
        "| layout | files | MB (allocated) | write maps/s (files: put; packed: parent's part writes) "
        "| read cold maps/s | read warm maps/s |"
    )
    print("|---|---|---|---|---|---|")
    for lay, _ in LAYOUTS:
        d = res["disk"][lay]
        print(
            f"| {lay} | {d['files']} | {d['bytes'] / 1e6:.1f} ({d['allocated'] / 1e6:.1f}) | "
            f"{res['write_maps_per_s'][lay]:.0f} | {med[f'{lay}_cold']:.0f} | "
            f"{med[f'{lay}_warm']:.0f} |"
        )
    for lay, r in res["over_files"].items():
        print(f"{lay} / files read rate: cold {r['cold']:.2f}x, warm {r['warm']:.2f}x")
    enc = {"": res["encode_maps_per_s_per_core"], "_cpu": res["encode_maps_per_s_per_core_cpu"]}
    print(
        f"one core, ms per image (medians of {args.rounds} alternated rounds), wall / CPU time; "
        f"load average {res['load_average'][0]:.1f} on {res['cpu_count']} cores at the end:"
    )
    for label, name in (
        ("FH kernel", "fh"),
        ("JPEG decode", "decode"),
        ("decode + FH + encode + part write", "end_to_end"),
    ):
        print(f"  {label}: {1e3 / rate[name]:.1f} / {1e3 / rate[name + '_cpu']:.1f}")
    print(f"  zlib encode: {1e3 / enc['']:.2f} / {1e3 / enc['_cpu']:.2f}")
    print(
        f"pool, {args.workers} workers, negligible work: {dispatch['img_per_s']:.0f} img/s; "
        f"parent CPU {dispatch['parent_cpu_us_per_img']:.0f} us per image"
    )
    print(
        f"ImageNet train ({IMAGENET_TRAIN} images) on {CORES} cores, projected as the per-core "
        f"rate x {CORES}, wall / CPU-time rate: FH only {proj['fh_min']:.1f} / "
        f"{proj['fh_cpu_min']:.1f} min, end to end {proj['end_to_end_min']:.1f} / "
        f"{proj['end_to_end_cpu_min']:.1f} min. Serial parts in the parent at their measured "
        f"rates: part writes {proj['parent_part_writes_min']:.1f} min, the parent's CPU per "
        f"image {proj['parent_cpu_min']:.1f} min. Packed cache ~{proj['imagenet_packed_gb']:.1f}"
        f" GB in ~{-(-IMAGENET_TRAIN // 4096)} files; per-file ~{proj['imagenet_files_gb']:.1f} "
        f"GB ({proj['imagenet_files_allocated_gb']:.1f} GB allocated) in {IMAGENET_TRAIN} files"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
