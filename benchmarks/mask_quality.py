"""How well do FH / grid / whole-image masks match the scenes' objects, at full resolution and
on the backbone's feature grid? (Diagnostic for the efficiency benchmark.)

For every train scene and every ground-truth object (instance id > 0) we take the best IoU of
any region of the candidate map with the object ("object recall IoU"), once on the full-size
maps and once after both maps are reduced to the ``g x g`` feature grid with the training code's
own ``downsample_masks`` (majority vote). Reported: mean best IoU over objects, the fraction of
objects with best IoU >= 0.5, and the mean number of region ids on the grid.

    python benchmarks/mask_quality.py --data benchmarks/.cache/scenes_2000_500_128 --grid 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def best_iou(objects: np.ndarray, regions: np.ndarray) -> list[float]:
    """For each id > 0 of ``objects [H, W]``: the max IoU with any id of ``regions [H, W]``."""
    out = []
    n_r = int(regions.max()) + 1
    area_r = np.bincount(regions.ravel(), minlength=n_r)
    for i in np.unique(objects):
        if i == 0:
            continue
        obj = objects == i
        inter = np.bincount(regions[obj], minlength=n_r)  # [n_r]
        union = obj.sum() + area_r - inter
        out.append(float((inter / np.maximum(union, 1)).max()))
    return out


def grid_map(labels: np.ndarray, g: int) -> np.ndarray:
    """``labels [H, W]`` resized (nearest) to a ``32g`` px view, as the whole-image view of
    the pretraining transform would be, then reduced to ``[g, g]`` by the training code's
    majority vote."""
    from PIL import Image

    from detcon.masks import downsample_masks

    view = np.asarray(
        Image.fromarray(labels.astype(np.int32), mode="I").resize((32 * g, 32 * g), Image.NEAREST)
    )
    return downsample_masks(torch.from_numpy(view[None].astype(np.int64)), (g, g))[0].numpy()


def view_grid_map(labels: np.ndarray, g: int, view: int) -> np.ndarray:
    """``labels [H, W]`` resized (nearest) to a ``view`` px whole-image view, then reduced to
    ``[g, g]`` by the training code's majority vote (``view`` a multiple of ``g``)."""
    from PIL import Image

    from detcon.masks import downsample_masks

    im = Image.fromarray(labels.astype(np.int32), mode="I").resize((view, view), Image.NEAREST)
    small = np.asarray(im).astype(np.int64)
    return downsample_masks(torch.from_numpy(small[None]), (g, g))[0].numpy()


def quality_arrays(gts: np.ndarray, maps: np.ndarray, grid: int, view: int) -> dict:
    """Statistics of candidate region maps ``maps [N, H, W]`` against instance maps ``gts
    [N, H, W]`` (0 = background, not scored): full resolution and on the ``grid x grid``
    feature grid of a ``view`` px whole-image view."""
    full, coarse, ids = [], [], []
    for gt, lab in zip(gts, maps, strict=True):
        lab = np.asarray(lab, np.int64)
        full += best_iou(gt, lab)
        g_lab = view_grid_map(lab, grid, view)
        coarse += best_iou(view_grid_map(gt, grid, view), g_lab)
        ids.append(len(np.unique(g_lab)))
    return {
        "best_iou_full": float(np.mean(full)) if full else float("nan"),
        "recall50_full": float(np.mean(np.asarray(full) >= 0.5)) if full else float("nan"),
        "best_iou_grid": float(np.mean(coarse)) if coarse else float("nan"),
        "recall50_grid": float(np.mean(np.asarray(coarse) >= 0.5)) if coarse else float("nan"),
        "ids_on_grid": float(np.mean(ids)),
        "objects_full": len(full),
        "objects_on_grid": len(coarse),
    }


def mask_quality(data: Path, grid: int, limit: int = 500) -> dict:
    """Statistics per mask source found under ``data/masks`` (plus ``whole``)."""
    from detcon.masks.cache import MaskCache

    images = data / "unlabelled" / "images"
    files = sorted(images.glob("*.jpg"))[:limit]
    gts = [np.load(data / "unlabelled" / "gt_masks" / (f.stem + ".npy")) for f in files]
    sources = {"whole": None}
    for name in ("grid", "fh", "gt"):
        if (data / "masks" / name / "cache.json").exists():
            sources[name] = MaskCache(data / "masks" / name, data_root=images)
    out = {}
    for name, cache in sources.items():
        full, coarse, ids = [], [], []
        for f, gt in zip(files, gts, strict=True):
            lab = np.zeros_like(gt) if cache is None else cache.get(f)
            if lab is None:
                raise FileNotFoundError(f"{name}: no cached map for {f}")
            full += best_iou(gt, lab)
            g_lab = grid_map(lab, grid)
            coarse += best_iou(grid_map(gt, grid), g_lab)
            ids.append(len(np.unique(g_lab)))
        out[name] = {
            "best_iou_full": float(np.mean(full)),
            "recall50_full": float(np.mean(np.asarray(full) >= 0.5)),
            "best_iou_grid": float(np.mean(coarse)) if coarse else float("nan"),
            "recall50_grid": float(np.mean(np.asarray(coarse) >= 0.5)) if coarse else float("nan"),
            "ids_on_grid": float(np.mean(ids)),
            "objects_full": len(full),
            "objects_on_grid": len(coarse),
        }
    return {"grid": grid, "images": len(files), "sources": out}


def format_table(stats: dict) -> str:
    g = stats["grid"]
    lines = [
        f"mask quality on {stats['images']} train scenes (objects: best-IoU region)",
        "",
        f"| masks | best IoU (full) | IoU>=0.5 (full) | best IoU ({g}x{g} grid) | "
        f"IoU>=0.5 (grid) | ids on grid |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in stats["sources"].items():
        lines.append(
            f"| {name} | {s['best_iou_full']:.3f} | {s['recall50_full']:.3f} | "
            f"{s['best_iou_grid']:.3f} | {s['recall50_grid']:.3f} | {s['ids_on_grid']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="scenes folder with masks/ caches")
    p.add_argument("--grid", type=int, default=3, help="feature grid side (view size // 32)")
    p.add_argument("--limit", type=int, default=500, help="number of train scenes")
    p.add_argument("--json", type=Path, help="also write the statistics here")
    args = p.parse_args(argv)
    stats = mask_quality(args.data, args.grid, args.limit)
    print(format_table(stats))
    if args.json:
        args.json.write_text(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
