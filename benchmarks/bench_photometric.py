"""Photometric cost of one view at 224 px, one thread: ``official`` (dm_pix semantics) vs
``torchvision`` colour ops of TwoViewTransform, each including its uint8 -> float conversion.

Inputs are 224 px bicubic crops of scikit-image's bundled photographs (no download). The two
modes alternate over rounds on the same images; the best round of each is reported (the
machine is shared). Usage::

    python benchmarks/bench_photometric.py [--images 300] [--rounds 3] [--size 224]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def crops(n: int, size: int) -> list[torch.Tensor]:
    """``n`` uint8 ``[3, size, size]`` views of the bundled photographs (random crops)."""
    from detcon.data import builtin_images, load_image
    from detcon.data.transforms import official_crop_box, paired_geometry

    g = torch.Generator().manual_seed(0)
    photos = [torch.from_numpy(np.array(load_image(p))) for p in builtin_images()]
    out = []
    for i in range(n):
        img = photos[i % len(photos)].permute(2, 0, 1).contiguous()
        box = official_crop_box(img.shape[1], img.shape[2], generator=g)
        mask = np.zeros(img.shape[1:], dtype=np.int64)
        out.append(paired_geometry(img, mask, box, False, size, antialias=True)[0])  # uint8
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from detcon.data.transforms import TwoViewTransform

    views = crops(args.images, args.size)
    modes = ("torchvision", "official")
    tfs = {m: TwoViewTransform(args.size, photometric=m) for m in modes}
    best = {(m, w): float("inf") for m in modes for w in (0, 1)}
    torch.manual_seed(0)
    for r in range(args.rounds + 1):  # round 0 warms up
        for w in (0, 1):
            for m in modes:
                photo = tfs[m].photo[w]
                start = time.perf_counter()
                if m == "official":
                    for x in views:
                        photo(x.float().div_(255.0))
                else:
                    for x in views:
                        photo(x).float().div_(255.0)
                spent = time.perf_counter() - start
                if r > 0:
                    best[m, w] = min(best[m, w], spent)
    print(f"{args.images} views of {args.size} px, 1 thread, best of {args.rounds} rounds")
    print(f"  {'mode':<12} {'view a ms':>10} {'view b ms':>10} {'mean ms':>9}")
    for m in modes:
        a, b = (best[m, w] / args.images * 1e3 for w in (0, 1))
        print(f"  {m:<12} {a:>10.2f} {b:>10.2f} {(a + b) / 2:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
