"""Run folders: refusing to overwrite a run, choosing the checkpoint to resume from, checking
its config against this run's, and the clean stop on SIGTERM / SIGINT / SIGHUP."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path

from detcon import checkpoint
from detcon.config import DERIVED_KEYS, to_dict

log = logging.getLogger("detcon.train")


class ResumeError(ValueError):
    """The run folder / checkpoint does not fit the requested start (one-line message)."""


class RunExistsError(ResumeError):
    """``train.resume=never`` into a folder that already holds a run."""


class ResumeMismatchError(ResumeError):
    """The checkpoint to resume from was trained with another architecture or method."""


_NEVER, _AUTO = ("never", "", "false", "False"), ("auto", "true", "True")
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def kept_checkpoints(run_dir: str | Path) -> list[Path]:
    """The kept ``step_XXXXXXX.pt`` files of a run folder, newest (highest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m[1]), p) for p in run_dir.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def run_history(run_dir: str | Path) -> list[str]:
    """What makes ``run_dir`` hold a run: ``last.pt``, ``step_*.pt``, a non-empty
    ``metrics.jsonl`` (names, empty for a new or empty folder)."""
    run_dir = Path(run_dir)
    found = []
    if (run_dir / "last.pt").exists():
        found.append("last.pt")
    found += [p.name for p in kept_checkpoints(run_dir)]
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    return found


# what a run writes into its folder (moved aside by ``overwrite``)
RUN_FILES = ("last.pt", "metrics.jsonl", "config.yaml", "masks.png", "loss.png", "tb")


def check_fresh_start(cfg, overwrite: bool = False, move_aside: bool = True) -> Path | None:
    """For ``train.resume=never``: refuse (:class:`RunExistsError`) a folder that holds a run,
    touching nothing; with ``overwrite`` move the old run's files into
    ``RUN_DIR/replaced-YYYYmmdd-HHMMSS/`` instead and return that folder (only where
    ``move_aside``: rank 0; the other ranks just do not refuse)."""
    if cfg.train.resume not in _NEVER:
        return None
    run_dir = Path(cfg.train.out)
    found = run_history(run_dir)
    if not found:
        return None
    if not overwrite:
        listed = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise RunExistsError(
            f"{run_dir} already holds a run ({listed}): add --resume (train.resume=auto) to "
            "continue it, or choose another --out, or pass --overwrite to start afresh "
            "(the old files are moved aside)"
        )
    if not move_aside:
        return None
    aside = run_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
    n = 0
    while aside.exists():
        n += 1
        aside = run_dir / time.strftime(f"replaced-%Y%m%d-%H%M%S-{n}")
    aside.mkdir()
    names = list(RUN_FILES) + [p.name for p in kept_checkpoints(run_dir)]
    for name in names:
        if (run_dir / name).exists() or (run_dir / name).is_symlink():
            (run_dir / name).rename(aside / name)
    log.warning("--overwrite: moved the previous run's files in %s to %s", run_dir, aside)
    return aside


def select_resume(cfg) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its loaded contents: ``train.resume`` = never | auto |
    a path.

    ``auto`` uses ``RUN_DIR/last.pt``; when it is missing, unreadable or damaged it falls back
    to the newest kept ``step_*.pt`` that loads (and says so). A folder that holds a run
    history but no loadable checkpoint is refused (:class:`ResumeError`) rather than restarted
    from step 0 over that history; an empty or new folder starts from step 0.
    """
    r = cfg.train.resume
    if r in _NEVER:
        return None, None
    if r not in _AUTO:
        path = Path(r)
        if not path.is_file():
            raise FileNotFoundError(f"train.resume: checkpoint not found: {path}")
        return path, checkpoint.load(path)
    run_dir = Path(cfg.train.out)
    last = run_dir / "last.pt"
    problems = []
    for path in [last, *kept_checkpoints(run_dir)]:
        if path == last and not last.exists():
            problems.append(f"{path.name} is missing")
            continue
        if not path.is_file():
            problems.append(f"{path.name} is not a file")
            continue
        try:
            ckpt = checkpoint.load(path)
        except (ValueError, OSError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            problems.append(f"{path.name} does not load ({first})")
            log.warning("cannot resume from %s: %s", path, first)
            continue
        if path != last:
            log.warning(
                "%s: resuming from the newest kept checkpoint that loads, %s (step %s)",
                "; ".join(problems),
                path,
                ckpt.get("step"),
            )
        return path, ckpt
    history = run_history(run_dir)
    if history:
        raise ResumeError(
            f"cannot resume {run_dir}: it holds a run ({', '.join(history[:3])}) but no "
            f"loadable checkpoint ({'; '.join(problems)}); choose another --out, or start afresh "
            "with --overwrite (without --resume)"
        )
    log.info("no checkpoint in %s: starting from step 0", run_dir)
    return None, None


def find_resume(cfg) -> Path | None:
    """The checkpoint to resume from (see :func:`select_resume`)."""
    return select_resume(cfg)[0]


# config keys that must agree between a checkpoint and the run resuming it
RESUME_MUST_MATCH = (
    "model.backbone",
    "model.width_multiplier",
    "loss.method",
    "model.proj_hidden",
    "model.proj_dim",
    "model.pred_hidden",
)
# keys that legitimately change on resume (not even warned about)
RESUME_MAY_CHANGE = (
    "train.out",
    "train.resume",
    "train.steps",
    "train.epochs",
    "train.stop_after",
    "train.progress",
    *DERIVED_KEYS,  # in the configs saved by older versions
)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(cfg, ckpt: dict, path) -> list[str]:
    """Compare the checkpoint's saved config with the current one before loading anything:
    :class:`ResumeMismatchError` when an architecture / method key differs
    (``RESUME_MUST_MATCH``); a warning listing the other differing keys. Returns those keys."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict) or not saved:  # no config saved: the model info at least
        model = ckpt.get("model")
        info = model if isinstance(model, dict) else {}
        saved = {"model": {k: info[k] for k in ("backbone", "width_multiplier") if k in info}}
        if not saved["model"]:
            return []
    old, new = _flat(saved), _flat(to_dict(cfg))
    missing = object()
    diff = {
        k: (old.get(k, missing), new.get(k, missing))
        for k in sorted(old.keys() | new.keys())
        if old.get(k, missing) != new.get(k, missing)
    }

    def show(v):
        return "(absent)" if v is missing else repr(v)

    hard = [k for k in RESUME_MUST_MATCH if k in diff and diff[k][0] is not missing]
    if hard:
        raise ResumeMismatchError(
            f"cannot resume from {path}: it was trained with "
            + ", ".join(f"{k}={show(diff[k][0])}" for k in hard)
            + " but this run has "
            + ", ".join(f"{k}={show(diff[k][1])}" for k in hard)
        )
    soft = [k for k in diff if k not in RESUME_MAY_CHANGE and diff[k][0] is not missing]
    if soft:
        log.warning(
            "resuming from %s with a changed config: %s",
            path,
            ", ".join(f"{k}: {show(diff[k][0])} -> {show(diff[k][1])}" for k in soft),
        )
    return soft


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


class StopFlag:
    """SIGTERM / SIGINT / SIGHUP set ``flag.stop``; the loop then saves and exits cleanly.

    Handlers are installed only in the main thread and restored by :meth:`close`. A second
    SIGINT falls back to the previous handler (so Ctrl-C twice still interrupts).
    """

    def __init__(self):
        self.stop = False
        self.signum = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        old = self._old.get(signum)
        if self.stop and signum == signal.SIGINT and callable(old):
            old(signum, frame)
        self.stop, self.signum = True, signum
        try:  # the terminal / pipe may be gone (SIGHUP, `| tee` killed by the same Ctrl-C)
            log.warning("received signal %d: saving a checkpoint and stopping", signum)
        except Exception:
            pass

    def close(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
