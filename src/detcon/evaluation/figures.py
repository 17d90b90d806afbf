"""Figures of a segmentation result: per-class IoU bars and the confusion matrix, as PNG.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend
change) and written atomically next to the result JSON: ``<stem>.per_class_iou.png`` and
``<stem>.confusion.png`` for ``<stem>.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from detcon.fileio import atomic_write


def _names(result_metrics: dict, num_classes: int) -> list[str]:
    names = result_metrics.get("class_names")
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attaches the Agg canvas: savefig renders without pyplot
    return fig


def per_class_iou_figure(per_class_iou: list, names: list[str], miou: float):
    """Bar chart of the IoU of every class (``None`` / NaN: absent class, drawn as an empty
    bar labelled ``n/a``) with the mIoU as a dashed line. Returns a matplotlib ``Figure``."""
    if len(per_class_iou) != len(names):
        raise ValueError(f"{len(per_class_iou)} IoU values for {len(names)} class names")
    values = [math.nan if v is None else float(v) for v in per_class_iou]
    fig = _new_figure(max(4.0, 0.35 * len(values) + 1.5), 3.5)
    ax = fig.add_subplot()
    x = np.arange(len(values))
    heights = [0.0 if math.isnan(v) else v for v in values]
    bars = ax.bar(x, heights, color="tab:blue")
    for bar, v in zip(bars, values, strict=True):
        if math.isnan(v):  # absent from ground truth and predictions: no IoU
            ax.annotate(
                "n/a",
                (bar.get_x() + bar.get_width() / 2, 0.0),
                ha="center",
                va="bottom",
                fontsize=7,
                color="grey",
            )
    if not math.isnan(miou):
        ax.axhline(miou, color="tab:red", linestyle="--", linewidth=1, label=f"mIoU {miou:.3f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, names, rotation=90 if len(names) > 6 else 0, fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("IoU")
    ax.set_title("per-class IoU")
    return fig


def row_normalised(cm) -> np.ndarray:
    """``cm[t, p] / sum_p cm[t, p]``: the fraction of class ``t``'s pixels predicted as ``p``
    (a row of zeros for a class with no ground-truth pixels)."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def confusion_figure(cm, names: list[str]):
    """The confusion matrix ``cm[true][pred]`` normalised per ground-truth row (colour and,
    for up to 12 classes, the percentage in each cell). Returns a matplotlib ``Figure``."""
    frac = row_normalised(cm)
    k = frac.shape[0]
    if frac.shape != (k, k) or len(names) != k:
        raise ValueError(f"confusion matrix {frac.shape} does not fit {len(names)} class names")
    side = max(4.0, 0.3 * k + 2.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of the true class's pixels")
    if k <= 12:
        for t in range(k):
            for p in range(k):
                ax.text(
                    p,
                    t,
                    f"{100 * frac[t, p]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if frac[t, p] > 0.5 else "black",
                )
    ticks = np.arange(k)
    ax.set_xticks(ticks, names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)")
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` as PNG to ``path`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def save_segmentation_figures(result: dict, json_path: str | os.PathLike) -> list[Path]:
    """Write the per-class IoU chart and the confusion matrix of a segmentation ``result``
    next to ``json_path``. Returns the two PNG paths."""
    metrics = result["metrics"]
    cm = metrics.get("confusion_matrix")
    if cm is None:
        raise KeyError("segmentation result has no metrics['confusion_matrix']")
    names = _names(metrics, len(cm))
    json_path = Path(json_path)
    iou_png = json_path.with_name(f"{json_path.stem}.per_class_iou.png")
    cm_png = json_path.with_name(f"{json_path.stem}.confusion.png")
    save_figure(per_class_iou_figure(metrics["per_class_iou"], names, metrics["miou"]), iou_png)
    save_figure(confusion_figure(cm, names), cm_png)
    return [iou_png, cm_png]
