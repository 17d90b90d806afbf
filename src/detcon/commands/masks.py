"""``detcon masks DATA --out CACHE``: compute region maps for a folder of images, in parallel.

Resumable: every image's map is written atomically on its own, and images whose entry is
fresh (same file size + mtime, same generator and params) are reused, so rerunning after an
interruption only computes what is missing. Prints a summary at the end (also after Ctrl-C,
exit status 130); the full list of skipped files goes to ``CACHE/skipped.txt``
(``skipped_shard<K>.txt`` with ``--num-shards``).

``--layout packed`` stores thousands of maps per part file with a merged index instead of one
file per image (for ImageNet-sized folders; see docs/data.md). Parts are written atomically
and resumed part by part; with ``--num-shards N`` shard ``I`` writes the parts ``j % N == I``
and the last shard to finish merges the index (or run again with ``--merge``).
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
from typing import Any

import numpy as np

__all__ = [
    "add_parser",
    "run",
    "generate_masks",
    "generate_packed",
    "MaskRunStats",
    "build_method",
    "write_skipped",
    "AUTO_PACKED_MIN",
]

#: ``--layout auto`` packs folders with at least this many images (a new cache).
AUTO_PACKED_MIN = 50_000

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
    parts_written: int = 0  # packed layout: part files written / kept as they were
    parts_kept: int = 0

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
        if self.parts_written or self.parts_kept:
            lines.append(f"parts written: {self.parts_written}  kept: {self.parts_kept}")
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
    cache = _STATE["cache"]
    cached = cache.get(path, dtype=None)
    if cached is not None:
        return path, "reused", int(cached.max(initial=0)) + 1
    status, value = _make_map(path)
    if isinstance(value, str):  # skipped, with the reason
        return path, status, value
    cache.put(path, value)
    return path, "computed", int(value.max(initial=0)) + 1


@dataclass
class _PackedJob:
    """What a worker needs to encode maps for a packed cache (picklable: no open files)."""

    cache: Any  # PackedMaskCache (keys)
    codec: str
    files: Any = None  # the per-file cache of the same generator (converted entries)


def _process_packed(path: str) -> tuple:
    """Encode one image's map: ``(path, status, n_segments | reason, Record | None)``. A fresh
    per-file entry of the same generator is converted instead of recomputed."""
    from detcon.masks.cache import MaskCache
    from detcon.masks.packed import encode_map

    job: _PackedJob = _STATE["cache"]
    if job.files is None:
        job.files = MaskCache(job.cache.root, _STATE["generator"], job.cache.data_root)
    try:
        st = os.stat(path)
    except OSError as err:
        return path, "skipped", f"unreadable: {err.strerror}", None
    labels, status = job.files.get(path, dtype=None), "reused"
    if labels is None:
        status, labels = _make_map(path)
        if isinstance(labels, str):  # skipped, with the reason
            return path, status, labels, None
        status = "computed"
    rec = encode_map(job.cache.key(path), labels, st, job.codec)
    return path, status, rec.segments, rec


def _make_map(path: str) -> tuple[str, np.ndarray | str]:
    """``("ok", labels)`` or ``("skipped", reason)`` for one image."""
    from detcon.data.decode import DecodeError, load_image

    gen = _STATE["generator"]
    limit = _STATE.get("max_pixels", 0)
    if limit and getattr(gen, "name", "") == "fh" and getattr(gen, "max_side", None) is None:
        pixels = _header_pixels(path)
        if pixels > limit:
            return "skipped", (
                f"too large for this worker's memory: {pixels / 1e6:.1f} MP > --max-pixels "
                f"{limit / 1e6:.1f} MP (fewer --workers, a larger --max-pixels, or --max-side)"
            )
    try:
        image = load_image(path)
        if getattr(gen, "name", "") == "coco":
            labels = gen.labels(path)
            if labels.shape != (image.height, image.width):
                return "skipped", f"size mismatch: annotation {labels.shape} vs image"
        else:
            labels = gen(np.asarray(image, dtype=np.uint8))
    except DecodeError as err:
        return "skipped", "decode: " + str(err).split(": ", 1)[-1]
    except KeyError as err:
        return "skipped", f"not annotated: {err}"
    except (ValueError, RuntimeError, MemoryError) as err:
        return "skipped", f"generator error: {type(err).__name__}: {err}"
    return "ok", labels


def generate_masks(
    files,
    generator,
    cache,
    workers: int = 1,
    chunksize: int = 4,
    progress=True,
    skipped=(),
    max_pixels: int = 0,
):
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


def generate_packed(
    files,
    generator,
    cache,
    parts=None,
    part_size: int | None = None,
    workers: int = 1,
    progress=True,
    skipped=(),
    max_pixels: int = 0,
    codec: str = "zlib",
):
    """Compute the maps of ``files`` (the whole sorted listing) into the packed ``cache``
    (:class:`~detcon.masks.packed.PackedMaskCache`), part by part: part ``j`` holds images
    ``j * part_size .. (j + 1) * part_size - 1``; ``parts``: the part numbers to do (default
    all). Complete fresh parts are kept, others (re)written with their fresh entries copied.
    Otherwise as :func:`generate_masks`; returns :class:`MaskRunStats` (``images``: the
    images of ``parts``)."""
    from tqdm import tqdm

    from detcon.masks.packed import DEFAULT_PART_SIZE
    from detcon.masks.packing import PartAssembler, num_parts, plan_parts

    files = [str(f) for f in files]
    part_size = part_size or DEFAULT_PART_SIZE
    total = num_parts(len(files), part_size)
    parts = range(total) if parts is None else [j for j in parts if j < total]
    plans = plan_parts(cache, files, parts, part_size)
    stats = MaskRunStats(images=sum(len(p.paths) for p in plans) + len(skipped))
    stats.skipped = list(skipped)
    for plan in plans:
        stats.reused += len(plan.copy)
        stats.segments += plan.reused_segments
    todo = [p for plan in plans for p in plan.compute]
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", disable=not progress, smoothing=0.1)
    asm = PartAssembler(cache, plans, total)
    job = _PackedJob(cache, codec)
    try:
        asm.write_ready()
        if workers <= 1:
            _init_worker(generator, job, max_pixels)
            results = map(_process_packed, todo)
        else:
            results = _pool_results(todo, generator, job, workers, max_pixels, _process_packed)
        for result in results:
            path, status, value, rec = (*result, None)[:4]  # a dead worker's skip has no record
            if status == "skipped":
                stats.skipped.append((path, str(value)))
            else:
                setattr(stats, status, getattr(stats, status) + 1)
                stats.segments.append(int(value))
            asm.add(path, status, value, rec)
            bar.update(1)
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        asm.close()  # unfinished parts: temporary files removed
        cache.reload()  # the index loaded before this run is out of date
        bar.close()
    stats.parts_written, stats.parts_kept = len(asm.written), len(asm.kept)
    stats.seconds = time.perf_counter() - start
    return stats


def _pool_results(files, generator, cache, workers: int, max_pixels: int, fn=None):
    """``_process`` results of ``files`` from ``workers`` processes, at most ``4 * workers``
    in flight. A worker that dies (killed by the OS, e.g. out of memory) breaks the pool: the
    images that were in flight are retried one by one in a fresh single-process pool, and the
    one that kills its process again is reported as skipped; then the run goes on.
    ``fn``: the per-image function (default ``_process``)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    def pool(n):
        return ProcessPoolExecutor(
            n, mp.get_context(), _init_pool_worker, (generator, cache, max_pixels)
        )

    fn = fn or _process
    todo, ex = list(reversed(files)), pool(workers)
    running: dict = {}
    try:
        while todo or running:
            while todo and len(running) < 4 * workers:
                path = todo.pop()
                running[ex.submit(fn, path)] = path
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
                        yield one.submit(fn, path).result()
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
    from detcon.masks.source import CacheFolder, GroundTruth, parse_mask_source

    source = parse_mask_source(args.method)  # slic, quickshift, ..., module:function, coco
    if not isinstance(source, GroundTruth):
        if isinstance(source, CacheFolder):
            raise SystemExit(f"error: --method {args.method!r} is a folder, not a generator")
        return source.build()
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
    if args.part_size is not None and args.part_size < 1:
        raise SystemExit(f"error: --part-size must be >= 1, got {args.part_size}")
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
    if args.shard:
        scan_skipped = []  # the scan's rejects are reported once, by shard 0
    generator = build_method(args)
    layout, part_size = _choose_layout(args, generator, len(files))
    if layout == "packed":
        return _run_packed(args, data, files, scan_skipped, generator, part_size)
    if args.merge:
        raise SystemExit("error: --merge is for the packed layout (--layout packed)")
    files = files[args.shard :: args.num_shards]  # shard = every num_shards-th file
    cache = MaskCache(args.out, generator, data_root=data)
    cache.write_info()
    stale = cache.remove_stale_temps()  # left by a killed run: never entries, never kept
    if stale:
        print(f"removed {stale} temporary file(s) of an interrupted run")
    workers, max_pixels = _workers_and_limit(args, generator, len(files), cache.folder)
    stats = generate_masks(
        files,
        generator,
        cache,
        workers,
        progress=not args.quiet,
        skipped=scan_skipped,
        max_pixels=max_pixels,
    )
    return _report(stats, cache.root, args)


def _choose_layout(args, generator, num_files: int) -> tuple[str, int]:
    """``(layout, part size)`` from ``--layout`` / ``--part-size`` and what the cache holds."""
    import json

    from detcon.masks.cache import cache_layout, generator_id
    from detcon.masks.packed import DEFAULT_PART_SIZE

    existing = cache_layout(args.out, generator)
    layout = args.layout
    if layout is None:
        layout = existing or "files"
    elif layout == "auto":
        layout = existing or ("packed" if num_files >= AUTO_PACKED_MIN else "files")
    elif layout == "files" and existing == "packed":
        raise SystemExit(
            f"error: {args.out} holds a packed cache of {generator.name} {generator.params}; "
            "--layout files would write one file per image next to it (use another --out)"
        )
    part_size = args.part_size
    info = Path(args.out) / "cache.json"
    if part_size is None and info.is_file():  # the size recorded by the first run
        spec = json.loads(info.read_text())
        if spec.get("folder") == generator_id(generator.name, generator.params):
            part_size = spec.get("part_size")
    return layout, int(part_size or DEFAULT_PART_SIZE)


def _workers_and_limit(args, generator, num_files: int, folder) -> tuple[int, int]:
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    if args.max_pixels is None:
        max_pixels = default_max_pixels(generator, workers)
    else:
        max_pixels = int(args.max_pixels * 1e6)
    limit = f"; images up to {max_pixels / 1e6:.0f} MP" if max_pixels else ""
    print(
        f"{num_files} images in {args.data} (shard {args.shard}/{args.num_shards}); "
        f"method {generator.name} {generator.params}; {workers} workers{limit} -> {folder}"
    )
    return workers, max_pixels


def _run_packed(args, data, files, scan_skipped, generator, part_size: int) -> int:
    """``--layout packed``: this shard's parts (``j % num_shards == shard``), then the merge
    once every part of the listing exists."""
    from detcon.masks.packed import PackedMaskCache, merge_parts, part_files, read_manifest
    from detcon.masks.packing import num_parts

    cache = PackedMaskCache(args.out, generator, data_root=data)
    total = num_parts(len(files), part_size)
    if not args.merge:
        cache.write_info(part_size, args.codec)
        stale = cache.remove_stale_temps()  # unfinished parts of a killed run
        if stale:
            print(f"removed {stale} temporary file(s) of an interrupted run")
        parts = list(range(args.shard, total, args.num_shards))
        mine = sum(len(files[j * part_size : (j + 1) * part_size]) for j in parts)
        workers, max_pixels = _workers_and_limit(args, generator, mine, cache.folder)
        print(f"packed: {len(parts)} of {total} parts of {part_size} images")
        stats = generate_packed(
            files,
            generator,
            cache,
            parts,
            part_size,
            workers,
            progress=not args.quiet,
            skipped=scan_skipped,
            max_pixels=max_pixels,
            codec=args.codec,
        )
        code = _report(stats, cache.root, args)
        if code:
            return code
        current = read_manifest(cache.folder)
        if not stats.parts_written and current and current["num_parts"] == total:
            print(f"merged index up to date: {current['entries']} maps")
            return 0
    try:
        manifest = merge_parts(cache.folder, total)
    except FileNotFoundError as err:
        print(f"not merged yet: {err} (the last shard to finish merges, or rerun with --merge)")
        return 1 if args.merge else 0
    orphans = [p for j, p in part_files(cache.folder).items() if j >= total]
    for p in orphans:  # parts of a longer listing of this folder: not in the index
        p.unlink(missing_ok=True)
    extra = f"; removed {len(orphans)} part(s) of an older, longer listing" if orphans else ""
    print(
        f"merged index: {manifest['entries']} maps in {len(manifest['parts'])} parts -> "
        f"{cache.folder / manifest['index']}{extra}"
    )
    return 0


def _report(stats: MaskRunStats, root, args) -> int:
    listing = write_skipped(stats, root, args.shard, args.num_shards)
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
    from detcon.commands._help import HelpFormatter, plain

    p = subparsers.add_parser(
        "masks",
        help="compute region maps (FH, grid, COCO, whole) for a folder of images",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="mask cache folder")
    p.add_argument(
        "--method",
        default="fh",
        help="fh, grid, coco, whole (with the options below), or any generator spec: "
        "slic:n_segments=64, quickshift, watershed:markers=64, pkg.module:function",
    )
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
    p.add_argument(
        "--layout",
        choices=["files", "packed", "auto"],
        default=None,
        help="files: one .npz per image; packed: part files of --part-size maps and a merged "
        f"index (for large folders); auto: packed from {AUTO_PACKED_MIN} images (default: the "
        "layout the cache already has, else files)",
    )
    p.add_argument(
        "--part-size",
        type=int,
        default=None,
        help="packed: images per part file (default: what the cache records, else 4096)",
    )
    p.add_argument(
        "--codec",
        choices=["zlib", "raw"],
        default="zlib",
        help="packed: maps zlib-compressed (default; FH maps ~65x smaller) or raw",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="packed: only write the merged index over all shards' parts (no computing)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p
