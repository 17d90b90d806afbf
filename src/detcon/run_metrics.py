"""The metrics of a run: JSONL plus the optional loggers (TensorBoard, W&B, MLflow), the
throughput meter, and the two pictures of a run (``masks.png`` at the start, ``loss.png`` at
the end). Logging set-up is :mod:`detcon.logs`."""

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
    """Appends one JSON object per logged step to ``metrics.jsonl`` and fans every record out
    to the loggers of ``train.loggers`` (:mod:`detcon.loggers`: TensorBoard in ``tb/``,
    Weights & Biases, MLflow). Only rank 0 writes; elsewhere every method is a no-op.

    Args:
        run_dir: the run folder.
        tensorboard: without ``cfg`` or ``loggers``: TensorBoard (True) or JSONL only.
        start_step: the step the run starts from (0 for a fresh run, the checkpoint's step on
            resume): records of an earlier run in the same folder logged after that step are
            dropped, so the file describes exactly one history (a fresh run starts an empty
            file; a resumed one does not repeat the steps it is about to redo). W&B and
            MLflow continue the run recorded in the folder when ``start_step`` > 0.
        cfg: the run's :class:`~detcon.config.Config`: its ``train.loggers`` and
            ``train.logger_project`` choose the loggers, and it is logged as their config.
        loggers: the ``train.loggers`` string, overriding ``cfg``'s.

    The run's pictures go to the loggers too: ``masks.png`` with the first record written
    after it exists, ``loss.png`` (drawn here from ``metrics.jsonl``) on :meth:`close`. A
    logger that raises is reported once and dropped; ``metrics.jsonl`` is always written.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool = True,
        start_step: int = 0,
        cfg=None,
        loggers: str | None = None,
    ):
        from detcon import loggers as loggers_mod

        self.active = dist.is_main()
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.loggers: list = []
        self._pictures_sent: set[str] = set()
        self._last_step = start_step
        if self.active and self.path.exists():
            self._truncate_after(start_step)
        if not self.active:
            return
        if loggers is None:
            loggers = cfg.train.loggers if cfg is not None else None
        if loggers is None:
            loggers = "tensorboard" if tensorboard else "none"
        config = None
        if cfg is not None:
            from detcon.config import to_dict

            config = to_dict(cfg)
        project = cfg.train.logger_project if cfg is not None else "detcon"
        self.loggers = loggers_mod.build_loggers(
            loggers, self.run_dir, project=project, config=config, resume=start_step > 0
        )

    @property
    def tb(self):
        """The TensorBoard ``SummaryWriter`` when that logger is on, else None."""
        for logger in self.loggers:
            if logger.name == "tensorboard":
                return logger.writer
        return None

    def _each(self, method: str, *args) -> None:
        """Call ``method`` on every logger; one that raises is reported and dropped."""
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # noqa: BLE001 - a logger never stops the run
                logging.getLogger("detcon.train").warning(
                    "logger %s failed (%s: %s); it is switched off for the rest of the run",
                    logger.name,
                    type(err).__name__,
                    err,
                )
                self.loggers.remove(logger)

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
        step = int(record.get("step", self._last_step))
        self._last_step = step
        from detcon.loggers import _scalars

        self._each("log_scalars", _scalars(record), step)
        self._send_picture("masks", step)

    def _send_picture(self, tag: str, step: int) -> None:
        path = self.run_dir / f"{tag}.png"
        if self.loggers and tag not in self._pictures_sent and path.is_file():
            self._pictures_sent.add(tag)
            self._each("log_image", tag, path, step)

    def close(self) -> None:
        """Draw ``loss.png``, send the pictures not sent yet, close the loggers."""
        if not self.active:
            return
        if self.loggers and self.path.exists():
            try:
                save_loss_curve(self.path, self.run_dir / "loss.png")
            except (OSError, ValueError) as err:
                logging.getLogger("detcon.train").warning("loss curve not drawn: %s", err)
        self._send_picture("masks", self._last_step)
        self._send_picture("loss", self._last_step)
        self._each("close")
        self.loggers = []


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_trend(metrics_path: str | os.PathLike) -> dict | None:
    """Whether the logged loss fell by more than its noise: the means of the first and the last
    quarter of the finite logged values (at least two each), their difference, and
    ``noise`` = 2 standard errors of that difference (from the spread of the values in the two
    quarters). ``falling`` is ``drop > noise``. None with fewer than 8 logged values."""
    rows = [r["loss"] for r in read_metrics(metrics_path) if math.isfinite(r.get("loss", math.nan))]
    if len(rows) < 8:
        return None
    k = len(rows) // 4
    first, last = rows[:k], rows[-k:]

    def mean_var(xs):
        m = sum(xs) / len(xs)
        return m, sum((x - m) ** 2 for x in xs) / (len(xs) - 1)

    (m1, v1), (m2, v2) = mean_var(first), mean_var(last)
    noise = 2 * math.sqrt(v1 / k + v2 / k)
    return {
        "first": m1,
        "last": m2,
        "drop": m1 - m2,
        "noise": noise,
        "quarter": k,
        "falling": m1 - m2 > noise,
    }


def save_loss_curve(metrics_path: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Plot loss against step from ``metrics.jsonl``: each logged value, and their trailing
    mean over about an eighth of the records (the DetCon loss of one batch depends on how many
    regions its images have, so single values are noisy). Returns the PNG path (None if
    nothing was logged)."""
    rows = [r for r in read_metrics(metrics_path) if math.isfinite(r.get("loss", math.nan))]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    window = max(1, len(rows) // 8)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(steps, losses, lw=1.0, alpha=0.45, marker=".", label="logged loss")
    if window > 1:
        ax.plot(steps, smoothed(losses, window), lw=2.2, label=f"mean of the last {window}")
        ax.legend(fontsize=11)
    ax.set_xlabel("step", fontsize=12)
    ax.set_ylabel("loss", fontsize=12)
    ax.tick_params(labelsize=11)
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


def save_mask_figure(batch: dict, out: str | os.PathLike, max_images: int = 4) -> Path:
    """The run's ``masks.png``: rows = images of the first batch, their two views with region
    maps, the feature grid and the ids drawn (:func:`detcon.data.viz.draw_batch`)."""
    from detcon.data.viz import draw_batch

    return draw_batch(batch, out, max_images=max_images)
