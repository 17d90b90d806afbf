"""Two-view data pipeline speed: DetCon views with cached masks vs a plain BYOL two-view pipeline.

Both pipelines decode the same photographs with ``detcon.data.load_image`` and produce two
224x224 normalised views with the same augmentations (random resized crop, flip, colour jitter
p=0.8, grayscale p=0.2, blur p=1.0/0.1 with a 23-tap kernel, solarize p=0/0.2). The DetCon
pipeline also reads each image's FH map from a ``MaskCache`` and carries it through crop/flip
(nearest). The plain one is torchvision ``transforms.v2`` with ``RandomResizedCrop``. One
process (images/s per core); the two pipelines alternate over several rounds and the best
round of each is reported (the machine is shared). ``--photometric`` picks the DetCon
pipeline's colour ops (``torchvision``, the default, or ``official``: dm_pix semantics); the
plain pipeline always uses torchvision's. Usage::

    python benchmarks/bench_pipeline.py [--json FILE] [--rounds 3] [--max-images 24]
        [--photometric official] [--antialias]

``--device-mode`` compares instead, on the photographs bundled with scikit-image
(:func:`detcon.data.builtin.builtin_images`), today's full per-image pipeline (official
colour ops in the worker) against the worker side of ``augment_on="device"`` (decode, crop,
flip, resize; uint8 views + drawn parameters), alternating A B / B A per round, and reports
median images/s per core (one process, one thread) and their ratio; then the device side
(:func:`detcon.data.device_augment.augment_on_device`) on the CPU at ``--device-batch`` items::

    python benchmarks/bench_pipeline.py --device-mode [--rounds 7] [--device-batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import benchmark_images, machine  # noqa: E402


def plain_byol_pipeline(size: int = 224):
    """torchvision v2 two-view BYOL pipeline without masks (same ops as TwoViewTransform)."""
    from torchvision.transforms import v2

    from detcon.data.transforms import IMAGENET_MEAN, IMAGENET_STD, _photometric

    def view(which):
        blur_p, sol_p = ((1.0, 0.0), (0.1, 0.2))[which]
        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(
                    size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True
                ),
                v2.RandomHorizontalFlip(),
                _photometric(size, blur_p, sol_p, 0.8, 0.2),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    view_a, view_b = view(0), view(1)
    return lambda image: (view_a(image), view_b(image))


def device_mode_benchmark(files, cache, args) -> dict:
    """Worker side of the modes (A: host, B: device, C: device + JPEG draft) and the device side
    on the CPU. Each arm decodes the file, reads its cached map and runs the transform, the
    work of ``ImageListDataset.__getitem__`` (C through ``TwoViewTransform.from_file``)."""
    import statistics

    from detcon.data.datasets import collate
    from detcon.data.decode import load_image
    from detcon.data.device_augment import augment_on_device
    from detcon.data.transforms import TwoViewTransform

    kw = dict(photometric="official", antialias=args.antialias)
    host = TwoViewTransform(args.image_size, **kw)
    dev = TwoViewTransform(args.image_size, augment_on="device", **kw)
    maps = {f: cache.get(f, dtype=None) for f in files}
    arms = {
        "full per-image pipeline (host)": lambda f: host(load_image(f), maps[f]),
        "worker side of augment_on=device": lambda f: dev(load_image(f), maps[f]),
    }
    if not args.antialias:  # JPEG draft needs the official (non-antialiased) resize
        draft = TwoViewTransform(args.image_size, augment_on="device", jpeg_draft=True, **kw)
        arms["device worker + jpeg_draft"] = lambda f: draft.from_file(f, maps[f])
    names = list(arms)
    rates = {name: [] for name in names}
    torch.manual_seed(0)
    for r in range(args.rounds + 1):  # round 0 warms up
        for name in names if r % 2 == 0 else names[::-1]:  # A B C, then C B A
            start = time.perf_counter()
            for f in files:
                arms[name](f)
            if r > 0:
                rates[name].append(len(files) / (time.perf_counter() - start))
        if r > 0:
            print(
                f"  round {r}/{args.rounds}: "
                + ", ".join(f"{n} {rates[n][-1]:.1f} img/s" for n in names)
            )
    base = rates[names[0]]
    worker = {
        "rates": rates,
        "median_images_per_s": {n: statistics.median(v) for n, v in rates.items()},
        "median_of_round_ratios": {
            n: statistics.median(b / a for a, b in zip(base, rates[n], strict=True))
            for n in names[1:]
        },
    }
    if not args.antialias:  # what draft decoding changes: same seeds, device-mode uint8 views
        diffs, used = [], 0
        for f in files:
            for seed in range(args.draft_seeds):
                g1, g2 = (torch.Generator().manual_seed(seed) for _ in range(2))
                a = dev(load_image(f), maps[f], g1)
                windows = draft.windows(*maps[f].shape, torch.Generator().manual_seed(seed))
                b = draft.from_file(f, maps[f], g2)
                if str(f).lower().endswith((".jpg", ".jpeg")) and draft.draft_scale(windows) > 1:
                    used += 2
                    for v in ("view_a", "view_b"):
                        diffs.append((a[v].float() - b[v].float()).abs().mean().item())
                assert all(torch.equal(a[m], b[m]) for m in ("mask_a", "mask_b"))
        worker["draft"] = {
            "views_decoded_reduced": used,
            "views_total": 2 * args.draft_seeds * len(files),
            "mean_abs_diff_0_255": statistics.fmean(diffs) if diffs else None,
            "max_view_mean_abs_diff_0_255": max(diffs) if diffs else None,
        }
    # device side on the CPU: one collated batch of device-mode items
    chosen = (files * args.device_batch)[: args.device_batch]
    batch = collate([dev(load_image(f), maps[f]) for f in chosen])
    times = []
    for r in range(args.rounds + 1):
        start = time.perf_counter()
        augment_on_device(batch, "cpu")
        if r > 0:
            times.append(time.perf_counter() - start)
    t = statistics.median(times)
    device_side = {
        "batch": args.device_batch,
        "image_size": args.image_size,
        "median_batch_ms": t * 1e3,
        "ms_per_item": t * 1e3 / args.device_batch,  # an item is two views
        "ms_per_view": t * 1e3 / args.device_batch / 2,
    }
    return {"worker": worker, "device_side_cpu": device_side}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write results to this JSON file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-images", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--photometric",
        default="torchvision",
        choices=("torchvision", "official"),
        help="colour ops of the DetCon pipeline (TwoViewTransform photometric=)",
    )
    parser.add_argument(
        "--antialias",
        action="store_true",
        help="torch's antialiased uint8 resize (a deviation) instead of the official TF bicubic",
    )
    parser.add_argument(
        "--device-mode",
        action="store_true",
        help="host pipeline vs the worker side of augment_on=device (bundled photographs)",
    )
    parser.add_argument("--device-batch", type=int, default=64)
    parser.add_argument("--draft-seeds", type=int, default=8, help="draws per photo for the diff")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from detcon.commands.masks import generate_masks
    from detcon.data.datasets import ImageListDataset
    from detcon.data.decode import load_image
    from detcon.data.transforms import TwoViewTransform
    from detcon.masks.cache import MaskCache
    from detcon.masks.generators import FHGenerator

    if args.device_mode:
        from detcon.data.builtin import builtin_images

        files = builtin_images()[: args.max_images]
    else:
        files = benchmark_images(args.max_images)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        gen = FHGenerator()  # official full-resolution masks, computed once (not timed)
        cache = MaskCache(tmp, gen)
        cache.write_info()
        print(f"caching FH masks of {len(files)} photographs ...")
        generate_masks(files, gen, cache, workers=os.cpu_count() or 1, progress=False)
        if args.device_mode:
            return _report_device_mode(device_mode_benchmark(files, cache, args), files, args)
        transform = TwoViewTransform(
            args.image_size, photometric=args.photometric, antialias=args.antialias
        )
        detcon = ImageListDataset(files, cache, transform)
        detcon.generator = None  # any cache miss would raise instead of silently computing
        plain = plain_byol_pipeline(args.image_size)

        names = ("detcon two-view + cached masks", "plain BYOL two-view")
        best = dict.fromkeys(names, float("inf"))
        torch.manual_seed(0)
        for r in range(args.rounds + 1):  # round 0 warms up (imports, page cache)
            spent = dict.fromkeys(names, 0.0)
            for i, f in enumerate(files):  # interleaved per image: both see the same load
                start = time.perf_counter()
                item = detcon[i]
                spent[names[0]] += time.perf_counter() - start
                start = time.perf_counter()
                view_a, view_b = plain(load_image(f))
                spent[names[1]] += time.perf_counter() - start
            assert item["mask_a"].shape == view_a.shape[1:]
            if r > 0:
                best = {n: min(best[n], spent[n]) for n in names}
            print(
                f"  round {r}/{args.rounds}: "
                + ", ".join(f"{n} {s:.2f} s" for n, s in spent.items())
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    base = len(files) / best["plain BYOL two-view"]
    for name, seconds in best.items():
        rate = len(files) / seconds
        rows.append(
            {
                "pipeline": name,
                "images": len(files),
                "best_seconds": round(seconds, 3),
                "images_per_s_per_core": round(rate, 2),
                "relative_to_plain": round(rate / base, 3),
            }
        )
    print(
        f"{len(files)} photographs, views {args.image_size}px, 1 process, "
        f"detcon photometric={args.photometric} antialias={args.antialias}; {machine()}"
    )
    print(f"  {'pipeline':<34} {'img/s/core':>10} {'vs plain':>9}")
    for row in rows:
        print(
            f"  {row['pipeline']:<34} {row['images_per_s_per_core']:>10.2f} "
            f"{row['relative_to_plain']:>9.3f}"
        )
    if args.json:
        out = {
            "machine": machine(),
            "photometric": args.photometric,
            "antialias": args.antialias,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


def _report_device_mode(res: dict, files, args) -> int:
    w, d = res["worker"], res["device_side_cpu"]
    print(
        f"{len(files)} bundled photographs, views {args.image_size}px, 1 process, 1 thread, "
        f"antialias={args.antialias}, medians of {args.rounds} rounds; {machine()}"
    )
    for name, rate in w["median_images_per_s"].items():
        print(f"  {name:<36} {rate:>8.2f} img/s/core")
    for name, ratio in w["median_of_round_ratios"].items():
        print(f"  {name}: {ratio:.2f}x the full pipeline (median of per-round ratios)")
    if "draft" in w:
        d0 = w["draft"]
        print(
            f"  jpeg_draft: {d0['views_decoded_reduced']}/{d0['views_total']} views from a reduced "
            f"decode; their mean |difference| {d0['mean_abs_diff_0_255']} (0..255), masks equal"
        )
    print(
        f"  device side on the CPU, batch {d['batch']}: {d['ms_per_item']:.2f} ms per item "
        f"(two views), {d['ms_per_view']:.2f} ms per view"
    )
    if args.json:
        from detcon.fileio import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump({"machine": machine(), "antialias": args.antialias, **res}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
