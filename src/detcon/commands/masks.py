"""``detcon masks DATA --out CACHE``: compute region maps for a folder of images, in parallel.

Resumable: every image's map is written atomically on its own, and images whose entry is
fresh (same file size + mtime, same generator and params) are reused, so rerunning after an
interruption only computes what is missing. Prints a summary at the end (also after Ctrl-C,
exit status 130); the full list of skipped files goes to ``CACHE/skipped.txt``
(``skipped_shard<K>.txt`` with ``--num-shards``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["add_parser", "run", "generate_masks", "MaskRunStats", "build_method", "write_skipped"]

_STATE: dict = {}  # per worker process: generator, cache


@dataclass
class MaskRunStats:
    """What a mask run did. ``segments`` holds the segment count of every valid image."""

    images: int = 0
    computed: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    segments: list[int] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def done(self) -> int:
        return self.computed + self.reused + len(self.skipped)

    def summary(self) -> str:
        rate = self.done / max(self.seconds, 1e-9)
        head = (
            f"interrupted after {self.done} of {self.images} images; " if self.interrupted else ""
        )
        lines = [
            f"{head}images: {self.images}  computed: {self.computed}  reused: {self.reused}  "
            f"skipped: {len(self.skipped)}  ({rate:.2f} images/s, {self.seconds:.1f} s)"
        ]
        if self.segments:
            seg = np.asarray(self.segments)
            lines.append(
                f"segments per image: min {seg.min()}  median {np.median(seg):g}  max {seg.max()}"
                f"  (>256: {(seg > 256).sum()}, >65536: {(seg > 65536).sum()} images; "
                "stored without truncation)"
            )
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        for path, reason in self.skipped[:20]:
            lines.append(f"  skipped {path}: {reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... {len(self.skipped) - 20} more skipped ({dict(reasons)})")
        return "\n".join(lines)


def _init_pool_worker(generator, cache, max_pixels: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: no worker tracebacks
    _init_worker(generator, cache, max_pixels)


def _init_worker(generator, cache, max_pixels: int = 0) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # one image per process; no nested thread pools
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _STATE["generator"], _STATE["cache"], _STATE["max_pixels"] = generator, cache, max_pixels


def _header_pixels(path: str) -> int:
    """Width x height from the file header (no decode); 0 when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.width) * int(im.height)
    except Exception:  # the decoder reports unreadable files with their reason
        return 0


#: Peak resident memory of full-resolution FH per megapixel, measured (bench_fh.py, 4.9 MP):
#: 122 MiB with the default kernel, 315 MiB with scikit-image's; with a margin.
FH_BYTES_PER_PIXEL = {"fast": 160, "skimage": 350}


def memory_available() -> int | None:
    """Bytes of memory available to new processes (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def default_max_pixels(generator, workers: int) -> int:
    """The largest image (pixels) full-resolution FH may take in each of ``workers`` processes
    without exhausting the machine's available memory (0: no limit known or needed)."""
    if getattr(generator, "name", "") != "fh" or getattr(generator, "max_side", None):
        return 0
    free = memory_available()
    if free is None:
        return 0
    per_pixel = FH_BYTES_PER_PIXEL.get(getattr(generator, "kernel", "fast"), 350)
    return int(0.8 * free / max(workers, 1) / per_pixel)


def _process(path: str) -> tuple[str, str, int | str]:
    """Compute or reuse one map. Returns ``(path, status, n_segments | reason)``."""
    from detcon.data.decode import DecodeError, load_image

    gen, cache = _STATE["generator"], _STATE["cache"]
    cached = cache.get(path, dtype=None)
    if cached is not None:
        return path, "reused", int(cached.max(initial=0)) + 1
    limit = _STATE.get("max_pixels", 0)
    if limit and getattr(gen, "name", "") == "fh" and getattr(gen, "max_side", None) is None:
        pixels = _header_pixels(path)
        if pixels > limit:
            return (
                path,
                "skipped",
                (
                    f"too large for this worker's memory: {pixels / 1e6:.1f} MP > --max-pixels "
                    f"{limit / 1e6:.1f} MP (fewer --workers, a larger --max-pixels, or --max-side)"
                ),
            )
    try:
        image = load_image(path)
        if getattr(gen, "name", "") == "coco":
            labels = gen.labels(path)
            if labels.shape != (image.height, image.width):
                return path, "skipped", f"size mismatch: annotation {labels.shape} vs image"
        else:
            labels = gen(np.asarray(image, dtype=np.uint8))
    except DecodeError as err:
        return path, "skipped", "decode: " + str(err).split(": ", 1)[-1]
    except KeyError as err:
        return path, "skipped", f"not annotated: {err}"
    except (ValueError, RuntimeError, MemoryError) as err:
        return path, "skipped", f"generator error: {type(err).__name__}: {err}"
    cache.put(path, labels)
    return path, "computed", int(labels.max(initial=0)) + 1


def generate_masks(
    files, generator, cache, workers: int = 1, chunksize: int = 4, progress=True, skipped=(),
    max_pixels: int = 0,
):  # fmt: skip
    """Compute the maps of ``files`` into ``cache`` with ``workers`` processes.

    ``workers <= 1`` runs in this process (no pickling; exceptions propagate). Returns
    :class:`MaskRunStats`. Files are processed in the given order; results arrive unordered.
    ``skipped``: ``(path, reason)`` of entries already rejected (e.g. by the folder scan),
    counted as images and reported with the others. Ctrl-C (``KeyboardInterrupt``) stops the
    run: the stats so far are returned with ``interrupted`` set (the entries written are kept).
    ``max_pixels`` > 0: full-resolution FH skips larger images (with the reason) before
    decoding them. A worker that dies skips its image instead of hanging the run.
    ``chunksize`` is accepted for compatibility and unused.
    """
    from tqdm import tqdm

    files = [str(f) for f in files]
    stats = MaskRunStats(images=len(files) + len(skipped), skipped=list(skipped))
    start = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", disable=not progress, smoothing=0.1)

    def record(path, status, value):
        if status == "skipped":
            stats.skipped.append((path, str(value)))
        else:
            setattr(stats, status, getattr(stats, status) + 1)
            stats.segments.append(int(value))
        bar.update(1)

    try:
        if workers <= 1:
            _init_worker(generator, cache, max_pixels)
            for result in map(_process, files):
                record(*result)
        else:
            for result in _pool_results(files, generator, cache, workers, max_pixels):
                record(*result)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _pool_results(files, generator, cache, workers: int, max_pixels: int):
    """``_process`` results of ``files`` from ``workers`` processes, at most ``4 * workers``
    in flight. A worker that dies (killed by the OS, e.g. out of memory) breaks the pool: the
    images that were in flight are retried one by one in a fresh single-process pool, and the
    one that kills its process again is reported as skipped; then the run goes on."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    def pool(n):
        return ProcessPoolExecutor(
            n, mp.get_context(), _init_pool_worker, (generator, cache, max_pixels)
        )

    todo, ex = list(reversed(files)), pool(workers)
    running: dict = {}
    try:
        while todo or running:
            while todo and len(running) < 4 * workers:
                path = todo.pop()
                running[ex.submit(_process, path)] = path
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = []
            for fut in done:
                path = running.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    broken.append(path)
            if not broken:
                continue
            suspects = broken + list(running.values())  # every image in flight when it broke
            running.clear()
            ex.shutdown(wait=False, cancel_futures=True)
            for path in suspects:  # alone, so a second death names the image
                with pool(1) as one:
                    try:
                        yield one.submit(_process, path).result()
                    except BrokenProcessPool:
                        yield path, "skipped", "worker died (killed by the OS: out of memory?)"
            ex = pool(workers)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def build_method(args):
    """Generator for ``--method`` and its options."""
    from detcon.masks.generators import FHGenerator, GridGenerator, WholeImageGenerator

    if args.method == "fh":
        return FHGenerator(args.fh_scale, args.fh_sigma, args.fh_min_size, args.max_side)
    if args.method == "grid":
        return GridGenerator(args.grid, args.grid)
    if args.method == "whole":
        return WholeImageGenerator()
    from detcon.masks.coco import CocoMasks

    if not args.coco_json:
        raise SystemExit("error: --method coco needs --coco-json FILE")
    return CocoMasks(args.coco_json)


def run(args) -> int:
    from detcon.data.datasets import no_images_error, scan_images
    from detcon.masks.cache import MaskCache

    if args.num_shards < 1 or not 0 <= args.shard < args.num_shards:
        raise SystemExit(
            f"error: need 0 <= --shard < --num-shards, got {args.shard}/{args.num_shards}"
        )
    data = Path(args.data)
    scan_skipped: list[tuple[str, str]] = []
    try:
        files = scan_images(data, scan_skipped)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C) while listing {data}; nothing written", file=sys.stderr)
        return 130
    if not files:
        odd = ""
        if scan_skipped:
            odd = f"; skipped {len(scan_skipped)}: " + ", ".join(
                f"{p} ({why})" for p, why in scan_skipped[:3]
            )
        print(f"detcon masks: error: {no_images_error(data)}{odd}", file=sys.stderr)
        return 2  # before the cache is created: no empty cache folder is left behind
    files = files[args.shard :: args.num_shards]  # shard = every num_shards-th file
    if args.shard:
        scan_skipped = []  # the scan's rejects are reported once, by shard 0
    generator = build_method(args)
    cache = MaskCache(args.out, generator, data_root=data)
    cache.write_info()
    stale = cache.remove_stale_temps()  # left by a killed run: never entries, never kept
    if stale:
        print(f"removed {stale} temporary file(s) of an interrupted run")
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    if args.max_pixels is None:
        max_pixels = default_max_pixels(generator, workers)
    else:
        max_pixels = int(args.max_pixels * 1e6)
    limit = f"; images up to {max_pixels / 1e6:.0f} MP" if max_pixels else ""
    print(
        f"{len(files)} images in {data} (shard {args.shard}/{args.num_shards}); "
        f"method {generator.name} {generator.params}; {workers} workers{limit} -> {cache.folder}"
    )
    stats = generate_masks(
        files, generator, cache, workers, progress=not args.quiet, skipped=scan_skipped,
        max_pixels=max_pixels,
    )  # fmt: skip
    listing = write_skipped(stats, cache.root, args.shard, args.num_shards)
    print(stats.summary())
    if listing is not None:
        print(f"full list of the {len(stats.skipped)} skipped files: {listing}")
    if stats.interrupted:
        print("interrupted (Ctrl-C); rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def write_skipped(stats: MaskRunStats, root, shard: int = 0, num_shards: int = 1) -> Path | None:
    """Write every skipped ``path<TAB>reason`` to ``root/skipped.txt`` (``skipped_shard<K>.txt``
    with several shards), atomically; remove a stale list when nothing was skipped. Returns the
    file written, or ``None``."""
    from detcon.fileio import atomic_write

    path = Path(root) / ("skipped.txt" if num_shards == 1 else f"skipped_shard{shard}.txt")
    if not stats.skipped:
        if not stats.interrupted:
            path.unlink(missing_ok=True)
        return None
    with atomic_write(path, "w") as f:
        f.writelines(f"{p}\t{' '.join(str(why).split())}\n" for p, why in stats.skipped)
    return path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "masks",
        help="compute region maps (FH, grid, COCO, whole) for a folder of images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="mask cache folder")
    p.add_argument("--method", choices=["fh", "grid", "coco", "whole"], default="fh")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    p.add_argument("--shard", type=int, default=0, help="this shard's index")
    p.add_argument("--num-shards", type=int, default=1, help="every num_shards-th file per shard")
    p.add_argument("--coco-json", help="COCO instances JSON (for --method coco)")
    p.add_argument("--fh-scale", type=float, default=1000.0, help="FH scale (official 1000)")
    p.add_argument("--fh-sigma", type=float, default=0.8, help="FH smoothing (official 0.8)")
    p.add_argument("--fh-min-size", type=int, default=1000, help="FH min segment (official 1000)")
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="run FH with the longer side reduced to this (default: full resolution)",
    )
    p.add_argument(
        "--max-pixels",
        type=float,
        default=None,
        help="full-resolution FH skips images above this many megapixels (default: what the "
        "available memory allows per worker, ~160 MB per MP; 0: no limit)",
    )
    p.add_argument("--grid", type=int, default=4, help="grid side g for --method grid (g x g)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p
