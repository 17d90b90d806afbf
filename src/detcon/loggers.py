"""Metric loggers beside ``metrics.jsonl``: TensorBoard, Weights & Biases, MLflow.

``train.loggers`` is a comma-separated list of :data:`LOGGERS`. Each logger receives every
logged record (scalars, under ``pretrain/<key>`` where the tool has folders) and the run's two
pictures (``masks.png`` after the first record, ``loss.png`` at the end). wandb and mlflow are
optional packages, imported only when asked for; :func:`check_available` says up front which
are missing and how to install them.

* ``tensorboard``: event files in ``RUN/tb`` (``tensorboard --logdir RUN/tb``).
* ``wandb``: ``wandb.init(project=train.logger_project, name=<run folder name>, dir=RUN,
  config=<the config>)``. ``WANDB_MODE=offline`` logs to ``RUN/wandb/offline-run-*`` without an
  account (``wandb sync`` uploads it later); otherwise wandb's own login applies. A resumed run
  continues the same W&B run (its id is kept in ``RUN/wandb_run_id``).
* ``mlflow``: the tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the
  run folder (``sqlite:///RUN/mlflow.db``, artifacts in ``RUN/mlartifacts``; ``mlflow ui
  --backend-store-uri sqlite:///RUN/mlflow.db`` shows it). Experiment ``train.logger_project``,
  run name = the run folder's name, params = the flattened config; a resumed run continues the
  same MLflow run (``RUN/mlflow_run_id``).

A logger that fails while the run is under way (a network error) is reported once and
switched off; the run, its checkpoints and ``metrics.jsonl`` carry on.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "LOGGERS",
    "LoggerUnavailableError",
    "parse_loggers",
    "check_available",
    "build_loggers",
    "TensorBoardLogger",
    "WandbLogger",
    "MLflowLogger",
]

#: The names ``train.loggers`` accepts (= detcon.config.LOGGERS).
LOGGERS = ("tensorboard", "wandb", "mlflow", "none")

#: The package each logger imports and how to install it.
_PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}

log = logging.getLogger("detcon.train")


class LoggerUnavailableError(ImportError):
    """A logger asked for in ``train.loggers`` whose package is not installed (one line)."""


def parse_loggers(text: str) -> list[str]:
    """``"tensorboard, wandb"`` -> ``["tensorboard", "wandb"]`` (order kept, duplicates and
    ``none`` dropped); an unknown name is a ValueError."""
    names: list[str] = []
    for name in (part.strip() for part in str(text).split(",")):
        if name not in LOGGERS:
            raise ValueError(f"train.loggers: {name!r} is not one of {LOGGERS}")
        if name != "none" and name not in names:
            names.append(name)
    return names


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_available(names: list[str] | str) -> None:
    """Raise :class:`LoggerUnavailableError` naming every requested logger whose package is
    missing, with the command that installs it."""
    if isinstance(names, str):
        names = parse_loggers(names)
    missing = [n for n in names if not _installed(_PACKAGES[n][0])]
    if missing:
        how = "; ".join(f"{n}: {_PACKAGES[n][1]}" for n in missing)
        raise LoggerUnavailableError(
            f"train.loggers asks for {', '.join(missing)}, not installed ({how}), or drop "
            "it from train.loggers"
        )


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalars(record: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def _write_id(path: Path, run_id: str) -> None:
    from detcon.fileio import atomic_write

    with atomic_write(path, "w") as f:
        f.write(f"{run_id}\n")


class Logger:
    """One logging tool: scalars of a record, pictures, close."""

    name = "base"

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def log_image(self, tag: str, path: Path, step: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError


class TensorBoardLogger(Logger):
    """Scalars as ``pretrain/<key>``, pictures as images, in ``RUN/tb``."""

    name = "tensorboard"

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log_scalars(self, scalars, step):
        for key, value in scalars.items():
            self.writer.add_scalar(f"pretrain/{key}", value, step)

    def log_image(self, tag, path, step):
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        self.writer.add_image(f"pictures/{tag}", pixels, step, dataformats="HWC")

    def close(self):
        self.writer.close()


class WandbLogger(Logger):
    """A Weights & Biases run in ``RUN/wandb`` (see the module docstring)."""

    name = "wandb"

    def __init__(self, run_dir: Path, project: str, config: dict | None, resume: bool):
        import wandb

        self.wandb = wandb
        id_file = run_dir / "wandb_run_id"
        run_id = _read_id(id_file) if resume else None
        try:
            self.run = wandb.init(
                project=project,
                name=run_dir.name,
                dir=str(run_dir),
                config=config or {},
                id=run_id,
                resume="allow" if run_id else None,
            )
        except Exception as err:  # noqa: BLE001 - wandb raises many kinds; say what to do
            raise RuntimeError(
                f"wandb.init failed ({type(err).__name__}: {err}); log in with `wandb login`, "
                "or set WANDB_MODE=offline to log without an account"
            ) from err
        _write_id(id_file, self.run.id)

    def log_scalars(self, scalars, step):
        self.run.log({f"pretrain/{k}": v for k, v in scalars.items()}, step=step)

    def log_image(self, tag, path, step):
        self.run.log({f"pictures/{tag}": self.wandb.Image(str(path))}, step=step)

    def close(self):
        self.run.finish()


class MLflowLogger(Logger):
    """An MLflow run (see the module docstring for where it is stored)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, project: str, config: dict | None, resume: bool):
        from mlflow.tracking import MlflowClient

        run_dir = run_dir.resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(project)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            local = not os.environ.get("MLFLOW_TRACKING_URI")
            artifacts = (run_dir / "mlartifacts").as_uri() if local else None
            experiment_id = self.client.create_experiment(project, artifact_location=artifacts)
        id_file = run_dir / "mlflow_run_id"
        run_id = _read_id(id_file) if resume else None
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=run_dir.name)
            self.run_id = run.info.run_id
            params = {k: str(v)[:500] for k, v in _flatten(config or {}).items()}
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
            _write_id(id_file, self.run_id)

    def log_scalars(self, scalars, step):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, tag, path, step):
        self.client.log_artifact(self.run_id, str(path), artifact_path="pictures")

    def close(self):
        self.client.set_terminated(self.run_id)


def build_loggers(
    names: list[str] | str,
    run_dir: str | os.PathLike,
    *,
    project: str = "detcon",
    config: dict | None = None,
    resume: bool = False,
) -> list[Logger]:
    """The loggers named by ``names`` (a list or the ``train.loggers`` string), writing for
    the run in ``run_dir``; ``resume`` continues the W&B / MLflow run recorded there."""
    if isinstance(names, str):
        names = parse_loggers(names)
    check_available(names)
    run_dir = Path(run_dir)
    out: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardLogger(run_dir))
        elif name == "wandb":
            out.append(WandbLogger(run_dir, project, config, resume))
        elif name == "mlflow":
            out.append(MLflowLogger(run_dir, project, config, resume))
    return out
