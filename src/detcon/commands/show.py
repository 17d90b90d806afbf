"""``detcon show DATA --out FILE.png``: images with their region maps and two augmented views
showing the feature-grid cells and the sampled masks DetCon contrasts."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


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
    ds = ImageListDataset(files, args.masks, transform, data_root=data_root)
    samples = []
    for i in range(len(files)):
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
    tmp = out.with_name(f".{out.name}.tmp.png")
    draw_overview(samples, transform, tmp, num_masks=args.num_masks, seed=args.seed)
    tmp.replace(out)
    print(f"wrote {out} ({len(samples)} images)")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("show", help="picture of images, region maps and two augmented views")
    p.add_argument("data", help="image folder, or 'builtin' (scikit-image photographs)")
    p.add_argument("--masks", default="fh", help="cache folder or fh|grid|whole|spec (default fh)")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--num", type=int, default=4, help="number of images (rows)")
    p.add_argument("--num-masks", type=int, default=16, help="masks sampled per view (K)")
    p.add_argument("--image-size", type=int, default=224, help="view side S")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p
