"""``detcon show DATA --out FILE.png``: images with their region maps and two augmented views
showing the feature-grid cells and the sampled masks DetCon contrasts.

Examples:
  detcon show builtin --out show.png
  detcon show DATA --masks CACHE --out show.png --num 6 --random
  detcon show DATA --masks slic:n_segments=64,compactness=10 --out slic.png
  detcon show DATA --masks mypkg.regions:make_regions --out mine.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "pick"]


def pick(n_files: int, num: int, random: bool, seed: int) -> list[int]:
    """File indices to try, in order: the first ones, or (``random``) a permutation of all of
    them drawn with ``seed`` (unreadable files are skipped, so more than ``num`` are listed)."""
    if not random:
        return list(range(n_files))
    import numpy as np

    return np.random.default_rng(seed).permutation(n_files).tolist()


def run(args) -> int:
    from detcon.data.builtin import builtin_images
    from detcon.data.datasets import ImageListDataset, scan_images
    from detcon.data.transforms import TwoViewTransform
    from detcon.data.viz import draw_overview

    if args.num < 1:
        raise SystemExit("error: --num must be >= 1")
    if args.data == "builtin":
        files, data_root = builtin_images(), None
    else:
        try:
            files, data_root = scan_images(args.data), Path(args.data)
        except FileNotFoundError as err:
            raise SystemExit(f"error: {err}") from None
    if not files:
        raise SystemExit(f"error: no images in {args.data}")
    transform = TwoViewTransform(args.image_size)
    try:
        ds = ImageListDataset(files, args.masks, transform, data_root=data_root)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    samples: list[tuple[str, Any, Any]] = []
    for i in pick(len(files), args.num, args.random, args.seed):
        if len(samples) == args.num:
            break
        try:
            image, labels = ds.load(i)
        except Exception as err:  # noqa: BLE001 - show what we can, say what we skipped
            print(f"skipping {files[i]}: {err}")
            continue
        samples.append((files[i].stem, image, labels))
    if not samples:
        raise SystemExit("error: no readable images")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_overview(samples, transform, out, num_masks=args.num_masks, seed=args.seed)
    gen = ds.generator
    what = f"{gen.name} {gen.params}" if ds.cache is None and gen is not None else args.masks
    print(f"wrote {out} ({len(samples)} images, masks: {what})")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    from detcon.commands._help import HelpFormatter, plain

    p = subparsers.add_parser(
        "show",
        help="picture of images, region maps and two augmented views",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", help="image folder, or 'builtin' (scikit-image photographs)")
    p.add_argument(
        "--masks",
        default="fh",
        help="mask cache folder, or a generator: fh | grid | whole | slic | quickshift | "
        "watershed, with parameters (slic:n_segments=64,compactness=10), or a function "
        "module.sub:function",
    )
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--num", type=int, default=4, help="number of images (rows)")
    p.add_argument(
        "--random",
        action="store_true",
        help="show --num images drawn at random (by --seed) instead of the first ones",
    )
    p.add_argument("--num-masks", type=int, default=16, help="masks sampled per view (K)")
    p.add_argument("--image-size", type=int, default=224, help="view side S (pixels)")
    p.add_argument("--seed", type=int, default=0, help="seed of the views, ids and --random")
    p.set_defaults(func=run)
    return p
