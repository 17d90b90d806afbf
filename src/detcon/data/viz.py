"""Pictures of what DetCon contrasts: region maps, two augmented views, feature-grid cells and
the sampled masks. Uses matplotlib's Agg backend (no display needed).

One renderer (:func:`render_rows`) draws every such picture: ``detcon show``
(:func:`draw_overview`: an image with its regions, then two augmented views) and a run's
``masks.png`` (:func:`draw_batch`: the views of the first training batch). In each panel the
regions are tinted with distinct colours (:func:`palette`: no colour repeats for any number of
regions) and outlined in white, the feature grid is drawn in black, and cells whose id was not
sampled are dimmed.
"""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path

import numpy as np
import torch

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "palette",
    "colour_labels",
    "boundaries",
    "overlay",
    "grid_cells",
    "render_rows",
    "draw_overview",
    "draw_batch",
]

#: Width of one panel and the font size, chosen to be readable on a laptop screen and in a
#: README at 100% zoom (three panels: about 1000 px wide).
PANEL_INCHES, DPI, FONT = 3.4, 100, 12

_GOLDEN = 0.618033988749895


def palette(n: int) -> np.ndarray:
    """``float [n, 3]`` RGB colours in [0, 1], all distinct: hues step by the golden ratio
    (neighbouring ids far apart on the colour wheel) and saturation / value cycle through
    three levels, so ids ``k`` and ``k + m`` differ for every ``m``."""
    from matplotlib.colors import hsv_to_rgb

    k = np.arange(n)
    hue = (k * _GOLDEN) % 1.0
    sat = np.array([0.85, 0.55, 1.0])[k % 3]
    val = np.array([0.95, 0.75, 0.6])[(k // 3) % 3]
    return hsv_to_rgb(np.stack([hue, sat, val], axis=-1).reshape(n, 3))


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """One colour per id (:func:`palette`): ``int [H, W] -> float [H, W, 3]`` in [0, 1]."""
    labels = np.asarray(labels)
    return palette(int(labels.max(initial=0)) + 1)[labels]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: pixels whose right or lower neighbour has another id."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image ``float [H, W, 3]`` in [0, 1] as grey (so a view's colour jitter does not change
    how a region looks), blended with the region colours, white boundaries on top."""
    grey = image @ np.array([0.299, 0.587, 0.114])
    out = (1 - alpha) * grey[..., None] + alpha * colour_labels(labels)
    out[boundaries(labels)] = 1.0
    return np.clip(out, 0, 1)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def grid_cells(mask: torch.Tensor, grid: int, num_masks: int, seed: int = 0, uniforms=None):
    """Feature-grid ids ``[grid, grid]`` of a view's mask ``[S, S]`` and ``num_masks`` ids
    sampled as in training (:func:`detcon.masks.downsample_masks` and
    :func:`detcon.masks.sample_mask_ids`): from ``uniforms`` ``[K]`` (a batch's ``mask_u``)
    when given, else from a generator seeded with ``seed``."""
    from detcon.masks import downsample_masks, sample_mask_ids

    cells = downsample_masks(mask[None], (grid, grid))
    if uniforms is not None:
        ids = sample_mask_ids(cells, num_masks, uniforms=uniforms[None].float())
    else:
        ids = sample_mask_ids(cells, num_masks, torch.Generator().manual_seed(seed))
    return cells[0], ids[0]


def _denorm(view: torch.Tensor) -> np.ndarray:
    view = view.detach().cpu()
    if view.dtype == torch.uint8:  # views left for augmentation on the device
        return (view.float() / 255.0).permute(1, 2, 0).numpy()
    view = view.float()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (view * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _view_panel(view, mask, grid: int, num_masks: int, seed: int, uniforms=None) -> dict:
    """A panel dict for one augmented view with its mask, grid and sampled cells."""
    mask = mask.detach().cpu()
    size = mask.shape[-1]
    pic = overlay(_denorm(view), mask.numpy())
    cells, ids = grid_cells(mask, grid, num_masks, seed, uniforms)
    sampled = torch.isin(cells, ids).numpy()
    if size % grid == 0:
        cell_px = np.kron(sampled, np.ones((size // grid, size // grid))).astype(bool)
        pic[~cell_px] *= 0.35  # dim cells whose id was not sampled
    n_ids = len(torch.unique(ids))
    title = f"{_n(len(mask.unique()), 'region')}, {n_ids} of {num_masks} ids drawn"
    return {"image": pic, "title": title, "grid": grid}


def render_rows(
    rows: list[dict],
    out_path: str | os.PathLike,
    *,
    columns: list[str] | None = None,
    caption: str = "",
) -> Path:
    """Draw ``rows`` (each ``{"label": str, "panels": [{"image": float [H, W, 3], "title":
    str, "grid": int | None}, ...]}``) to a PNG, written atomically. ``columns`` are headings
    over the first row; ``caption`` is one line of explanation under the figure. The PNG is
    stored with a 256-colour palette (small files; no visible loss on these pictures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detcon.fileio import atomic_write

    ncols = max(len(r["panels"]) for r in rows)
    caption = "\n".join(textwrap.wrap(caption, width=40 * ncols))
    lines = caption.count("\n") + 1 if caption else 0
    title_inches = 0.3 * (
        1 + max(p.get("title", "").count("\n") for r in rows for p in r["panels"])
    )
    height = (PANEL_INCHES + title_inches) * len(rows) + 0.25 * lines + (0.3 if columns else 0)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(PANEL_INCHES * ncols, height), squeeze=False
    )
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row["panels"]):
                ax.axis("off")
                continue
            panel = row["panels"][c]
            pic = panel["image"]
            ax.imshow(pic, interpolation="nearest")
            grid = panel.get("grid")
            if grid:
                h, w = pic.shape[:2]
                for k in range(1, grid):
                    ax.axhline(k * h / grid - 0.5, color="k", lw=1.0)
                    ax.axvline(k * w / grid - 0.5, color="k", lw=1.0)
            title = panel.get("title", "")
            if r == 0 and columns and c < len(columns):
                title = f"{columns[c]}\n{title}"
            ax.set_title(title, fontsize=FONT)
            if c == 0 and row.get("label"):
                ax.set_ylabel(row["label"], fontsize=FONT)
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=FONT - 1)
    fig.tight_layout(rect=(0, (0.25 * lines + 0.05) / height if caption else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    plt.close(fig)
    from PIL import Image

    out_path = Path(out_path)
    picture = Image.open(buf).convert("RGB").quantize(256)
    with atomic_write(out_path, "wb") as f:
        picture.save(f, format="PNG", optimize=True)
    return out_path


def _caption(grid: int, num_masks: int) -> str:
    return (
        f"colours and white lines: regions; black lines: the {grid}x{grid} feature grid; "
        f"dimmed cells: ids not among the {num_masks} drawn per view"
    )


def draw_overview(
    samples, transform, out_path, grid: int | None = None, num_masks: int = 16, seed=0
):
    """Save a PNG with one row per ``(name, image PIL, labels)`` sample (``detcon show``).

    Columns: image + region map; view a and view b with their resized masks, the feature-grid
    lines and the cells of the sampled masks outlined (unsampled cells dimmed).
    """
    torch.manual_seed(seed)
    size = transform.image_size
    grid = grid or max(1, size // 32)  # ResNet stride 32 (7x7 at 224)
    rows = []
    for r, (name, image, labels) in enumerate(samples):
        img = np.asarray(image, dtype=np.float64) / 255.0
        h, w = labels.shape[:2]
        panels = [
            {
                "image": overlay(img, labels),
                "title": f"{name}: {_n(int(labels.max()) + 1, 'region')} ({w}x{h})",
            }
        ]
        item = transform(image, labels)
        for c, key in ((1, "a"), (2, "b")):
            panels.append(
                _view_panel(
                    item[f"view_{key}"], item[f"mask_{key}"], grid, num_masks, seed + r * 2 + c
                )
            )
        rows.append({"panels": panels})
    columns = ["image and its regions", f"view a ({size} px)", f"view b ({size} px)"]
    return render_rows(rows, out_path, columns=columns, caption=_caption(grid, num_masks))


def draw_batch(
    batch: dict,
    out_path: str | os.PathLike,
    max_images: int = 4,
    grid: int | None = None,
    num_masks: int | None = None,
) -> Path:
    """A run's ``masks.png``: one row per image of a training batch, its two views with their
    region maps, the feature grid and the ids drawn. With the batch's ``mask_u`` uniforms
    ``[B, 2, K]`` the ids are the ones training draws (official sampling); without them
    ``num_masks`` (default 16) ids are drawn for display."""
    n = min(max_images, batch["view_a"].shape[0])
    size = batch["mask_a"].shape[-1]
    grid = grid or max(1, size // 32)
    uniforms = batch.get("mask_u")
    if uniforms is not None:
        num_masks = uniforms.shape[-1]
    num_masks = num_masks or 16
    rows = []
    for i in range(n):
        panels = []
        for v, key in enumerate("ab"):
            u = uniforms[i, v] if uniforms is not None else None
            panels.append(
                _view_panel(
                    batch[f"view_{key}"][i], batch[f"mask_{key}"][i], grid, num_masks, i * 2 + v, u
                )
            )
        index = batch.get("index")
        label = f"item {int(index[i])}" if index is not None else ""
        rows.append({"label": label, "panels": panels})
    columns = [f"view a ({size} px)", f"view b ({size} px)"]
    return render_rows(rows, out_path, columns=columns, caption=_caption(grid, num_masks))
