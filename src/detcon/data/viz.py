"""Pictures of what DetCon contrasts: region maps, two augmented views, feature-grid cells and
the sampled masks. Uses matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import numpy as np
import torch

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["colour_labels", "boundaries", "grid_cells", "draw_overview"]


def colour_labels(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random but fixed colour per id: ``int [H, W] -> float [H, W, 3]`` in [0, 1]."""
    n = int(labels.max(initial=0)) + 1
    palette = np.random.default_rng(seed).uniform(0.15, 1.0, size=(n, 3))
    return palette[labels]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: pixels whose right or lower neighbour has another id."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Image ``float [H, W, 3]`` in [0, 1] blended with region colours and white boundaries."""
    out = (1 - alpha) * image + alpha * colour_labels(labels)
    out[boundaries(labels)] = 1.0
    return np.clip(out, 0, 1)


def grid_cells(mask: torch.Tensor, grid: int, num_masks: int, seed: int = 0):
    """Feature-grid ids ``[grid, grid]`` of a view's mask and ``num_masks`` sampled ids.

    Uses :func:`detcon.masks.downsample_masks` / :func:`detcon.masks.sample_mask_ids` when
    available; otherwise nearest downsampling and a uniform draw among present ids (display only).
    """
    gen = torch.Generator().manual_seed(seed)
    try:
        from detcon.masks import downsample_masks, sample_mask_ids

        cells = downsample_masks(mask[None], (grid, grid))
        ids = sample_mask_ids(cells, num_masks, gen)
        return cells[0], ids[0]
    except (ImportError, AttributeError):
        s = mask.shape[-1]
        idx = ((torch.arange(grid) + 0.5) * s / grid).long()
        cells = mask[idx[:, None], idx[None, :]]
        present = cells.unique()
        ids = present[torch.randint(len(present), (num_masks,), generator=gen)]
        return cells, ids


def _denorm(view: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (view * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def draw_overview(
    samples, transform, out_path, grid: int | None = None, num_masks: int = 16, seed=0
):
    """Save a PNG with one row per ``(name, image PIL, labels)`` sample.

    Columns: image + region map; view a and view b with their resized masks, the feature-grid
    lines and the cells of the sampled masks outlined (unsampled cells dimmed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(seed)
    size = transform.image_size
    grid = grid or max(1, size // 32)  # ResNet stride 32 (7x7 at 224)
    fig, axes = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
    for row, (name, image, labels) in enumerate(samples):
        img = np.asarray(image, dtype=np.float64) / 255.0
        axes[row, 0].imshow(overlay(img, labels))
        axes[row, 0].set_title(f"{name}: {int(labels.max()) + 1} regions", fontsize=9)
        item = transform(image, labels)
        for col, key in ((1, "a"), (2, "b")):
            view, mask = _denorm(item[f"view_{key}"]), item[f"mask_{key}"]
            cells, ids = grid_cells(mask, grid, num_masks, seed + row * 2 + col)
            sampled = torch.isin(cells, ids).numpy()
            cell_px = np.kron(sampled, np.ones((size // grid, size // grid))).astype(bool)
            pic = overlay(view, mask.numpy())
            if cell_px.shape == pic.shape[:2]:
                pic[~cell_px] *= 0.35  # dim cells whose id was not sampled
            ax = axes[row, col]
            ax.imshow(pic)
            for k in range(1, grid):
                ax.axhline(k * size / grid - 0.5, color="k", lw=0.5)
                ax.axvline(k * size / grid - 0.5, color="k", lw=0.5)
            n_ids = len(torch.unique(ids))
            ax.set_title(f"view {key}: {n_ids} distinct of {num_masks} sampled ids", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=60, format="png")
    plt.close(fig)
    # 256-colour palette keeps the picture small (README asset) at no visible cost.
    Image.open(buf).convert("RGB").quantize(256).save(out_path, format="PNG", optimize=True)
    return out_path
