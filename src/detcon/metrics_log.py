"""Run logging: Python ``logging`` with a rank-0 filter, metrics to JSONL + TensorBoard, and the
two pictures of a run (``masks.png`` at the start, ``loss.png`` at the end)."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

from detcon import distributed as dist
from detcon.fileio import atomic_path, atomic_write


class RankZeroFilter(logging.Filter):
    """Drop records on ranks other than 0 (warnings and errors always pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return dist.is_main() or record.levelno >= logging.WARNING


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (robust to redirection and capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        """A terminal or pipe that has gone away (``| tee`` killed by the same Ctrl-C, a closed
        stderr) drops the record quietly: the run must still reach its final save."""
        if isinstance(sys.exc_info()[1], OSError | ValueError):
            return
        super().handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler on the ``detcon`` logger, filtered to rank 0; idempotent."""
    logger = logging.getLogger("detcon")
    logger.setLevel(level)
    if not any(getattr(h, "_detcon", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler._detcon = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler.addFilter(RankZeroFilter())
        logger.addHandler(handler)
        logger.propagate = False


def memory_mb(device: torch.device) -> float:
    """CUDA max allocated (MiB) on GPU, max resident set size (MiB) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


class Throughput:
    """Images/s and the fraction of wall time spent waiting for data since the last record."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        self.start, self.wait, self.steps = time.perf_counter(), 0.0, 0

    def record(self) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {
            "images_per_s": self.steps * self.batch_size / elapsed,
            "data_wait": self.wait / elapsed,
        }
        self.reset()
        return out


class MetricsWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors scalars to
    TensorBoard (``tb/``). Only rank 0 writes; elsewhere every method is a no-op.

    ``start_step`` is the step the run starts from (0 for a fresh run, the checkpoint's step on
    resume): records of an earlier run in the same folder logged after that step are dropped,
    so the file describes exactly one history (a fresh run starts an empty file; a resumed one
    does not repeat the steps it is about to redo).
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, start_step: int = 0):
        self.active = dist.is_main()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if self.active and self.path.exists():
            self._truncate_after(start_step)
        if self.active and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                logging.getLogger("detcon.train").warning("tensorboard missing: JSONL only")

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut by a crash: drop it
                continue
        with atomic_write(self.path, "w") as f:
            f.write("".join(f"{line}\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(f"pretrain/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_loss_curve(metrics_path: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Plot loss against step from ``metrics.jsonl``; returns the PNG path (None if empty)."""
    rows = [r for r in read_metrics(metrics_path) if math.isfinite(r.get("loss", math.nan))]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("DetCon loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_fig(fig, out)


def _save_fig(fig, out) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        with atomic_path(out, fsync=False) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return out


_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def save_mask_figure(batch: dict, out: str | os.PathLike, max_images: int = 4) -> Path:
    """Rows: images of the first batch; columns: view a, its region map, view b, its map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(max_images, batch["view_a"].shape[0])
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), dpi=100, squeeze=False)
    for i in range(n):
        for j, key in enumerate(("view_a", "mask_a", "view_b", "mask_b")):
            ax = axes[i][j]
            x = batch[key][i].detach().cpu()
            if key.startswith("view"):
                img = (x.float() * _STD + _MEAN).clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img)
            else:
                ax.imshow(x.numpy() % 20, cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
                key = f"{key} ({len(x.unique())} ids)"
            ax.set_title(key, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return _save_fig(fig, out)
