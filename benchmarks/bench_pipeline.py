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
        return v2.Compose([
            v2.PILToTensor(),
            v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            _photometric(size, blur_p, sol_p, 0.8, 0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])  # fmt: skip

    view_a, view_b = view(0), view(1)
    return lambda image: (view_a(image), view_b(image))


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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from detcon.commands.masks import generate_masks
    from detcon.data.datasets import ImageListDataset
    from detcon.data.decode import load_image
    from detcon.data.transforms import TwoViewTransform
    from detcon.masks.cache import MaskCache
    from detcon.masks.generators import FHGenerator

    files = benchmark_images(args.max_images)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        gen = FHGenerator()  # official full-resolution masks, computed once (not timed)
        cache = MaskCache(tmp, gen)
        cache.write_info()
        print(f"caching FH masks of {len(files)} photographs ...")
        generate_masks(files, gen, cache, workers=os.cpu_count() or 1, progress=False)
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
        rows.append({"pipeline": name, "images": len(files), "best_seconds": round(seconds, 3),
                     "images_per_s_per_core": round(rate, 2),
                     "relative_to_plain": round(rate / base, 3)})  # fmt: skip
    print(
        f"{len(files)} photographs, views {args.image_size}px, 1 process, "
        f"detcon photometric={args.photometric} antialias={args.antialias}; {machine()}"
    )
    print(f"  {'pipeline':<34} {'img/s/core':>10} {'vs plain':>9}")
    for row in rows:
        print(f"  {row['pipeline']:<34} {row['images_per_s_per_core']:>10.2f} "
              f"{row['relative_to_plain']:>9.3f}")  # fmt: skip
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


if __name__ == "__main__":
    sys.exit(main())
