"""Pretraining job. ``train(cfg)`` reads top to bottom: run folder -> data -> resume check ->
networks and optimizer -> resume -> loop (``train_step`` -> log -> checkpoint). The step itself
(lr / tau -> masks -> forward -> loss -> finite check -> backward -> step -> EMA) is
:func:`detcon.step.train_step`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from pathlib import Path

import torch
from tqdm import tqdm

from detcon import checkpoint
from detcon import distributed as dist
from detcon.config import Config, RunPlan, resolve, save_yaml
from detcon.data.loader import build_dataset, build_loader, num_classes
from detcon.fileio import remove_stale_temps
from detcon.logs import setup_logging
from detcon.run_metrics import (
    MetricsWriter,
    Throughput,
    memory_mb,
    read_metrics,
    save_loss_curve,
    save_mask_figure,
)
from detcon.runs import (
    ResumeMismatchError,
    StopFlag,
    check_fresh_start,
    check_resume_config,
    select_resume,
)
from detcon.step import NonFiniteLossError, TrainState, build_train_state, train_step

__all__ = ["train", "NonFiniteLossError"]

log = logging.getLogger("detcon.train")


def train(cfg: Config, dataset=None, *, overwrite: bool = False) -> dict:
    """Run (or resume) pretraining; returns a summary dict (run_dir, checkpoint, step, loss,
    stopped, finished_before, seconds). ``dataset`` overrides ``cfg.data`` (tests).

    With ``train.resume=never`` a run folder that already holds a run (``last.pt``,
    ``step_*.pt`` or a non-empty ``metrics.jsonl``) is refused with
    :class:`~detcon.runs.RunExistsError`, unless ``overwrite``: the old run's files are then
    moved into ``RUN_DIR/replaced-YYYYmmdd-HHMMSS/``."""
    setup_logging()
    dist.init_from_env()
    main, run_dir, start_time = dist.is_main(), Path(cfg.train.out), time.perf_counter()
    check_fresh_start(cfg, overwrite, move_aside=main)  # before anything is written
    device = dist.pick_device(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    # ---- data
    dataset = build_dataset(cfg) if dataset is None else dataset
    plan = resolve(cfg, len(dataset), dist.world_size())
    # ---- the checkpoint to resume from, checked against this config before anything is built
    resume_from, resume_ckpt = select_resume(cfg)
    if resume_ckpt is not None:
        check_resume_config(cfg, resume_ckpt, resume_from)
    if main:
        _remove_stale_temps(run_dir)
    loader, sampler = build_loader(dataset, cfg, plan, dist.rank(), device)
    # ---- networks, optimizer, resume
    state = build_train_state(cfg, plan, device, num_classes(dataset))
    step, loss = 0, float("nan")
    if resume_ckpt is not None and resume_from is not None:  # select_resume gives both or none
        step, loss = _resume(state, resume_ckpt, resume_from, run_dir)
        del resume_ckpt
    finished_before = resume_from is not None and step >= plan.total_steps
    if main:
        save_yaml(cfg, run_dir / "config.yaml", plan)
        _log_plan(cfg, plan, device, step)
    # ---- loop
    stop, writer = StopFlag(), MetricsWriter(run_dir, start_step=step, cfg=cfg)
    progress = _Progress(plan.total_steps, step, enabled=main and cfg.train.progress)
    meter = Throughput(cfg.data.batch_size)
    batches = _batches(
        loader,
        sampler,
        plan,
        cfg.train.grad_accum,
        step,
        meter,
        run_dir / "masks.png" if main else None,
    )
    session_steps, stopped = 0, False
    try:
        while step < plan.total_steps and not stopped:
            try:
                out = train_step(state, batches, step, stop_requested=lambda: stop.stop)
            except NonFiniteLossError as err:
                path = _save(state, step, loss)  # the state in memory is the last good one
                raise NonFiniteLossError(f"{err}; last good state saved to {path}") from None
            step, session_steps, meter.steps = step + 1, session_steps + 1, meter.steps + 1
            progress.update()
            if step % cfg.train.log_every == 0 or step == plan.total_steps:
                loss = dist.reduce_mean(out.loss).item()
                record = {"step": step, "epoch": (step - 1) // plan.steps_per_epoch, "loss": loss}
                record |= {"lr": out.lr, "tau": out.tau, **meter.record()}
                record["memory_mb"] = memory_mb(device)
                if out.probe_acc is not None:
                    record["probe_acc"] = dist.reduce_mean(out.probe_acc).item()
                writer.write(record)
                progress.postfix(loss=f"{loss:.4f}", lr=f"{out.lr:.3g}")
            if cfg.train.keep_every and step % cfg.train.keep_every == 0:
                _save(state, step, loss, f"step_{step:07d}.pt")
            stopped = out.stop or (
                cfg.train.stop_after > 0 and session_steps >= cfg.train.stop_after
            )
            if step % cfg.train.ckpt_every == 0 or step == plan.total_steps or stopped:
                path = _save(state, step, loss)  # first save, then talk about it
                if out.stop and path is not None:
                    log.warning("stopped by a signal at step %d: saved %s", step, path)
    finally:
        stop.close()
        batches.close()  # ends the loader's iterator (and its worker processes) now
        progress.close()
        writer.close()
    if main and (run_dir / "metrics.jsonl").exists():
        save_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    dist.barrier()
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / "last.pt"),
        "step": step,
        "loss": loss,
        "stopped": stopped,
        "finished_before": finished_before,
        "seconds": time.perf_counter() - start_time,
    }


def _batches(
    loader, sampler, plan: RunPlan, accum: int, step: int, meter: Throughput, figure: Path | None
) -> Generator:
    """The micro-batches of the run from step ``step`` on, epoch after epoch: exactly
    ``steps_per_epoch * grad_accum`` per epoch (a partial last batch group is dropped), the
    first epoch skipping what the steps before ``step`` consumed. Time spent waiting for data
    goes to ``meter.wait``; the first batch's views and region maps are drawn to ``figure``."""
    epoch, done = divmod(step, plan.steps_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip=done * plan.local_batch * accum)
        loader_iter = iter(loader)
        for _ in range((plan.steps_per_epoch - done) * accum):
            t0 = time.perf_counter()
            batch = next(loader_iter)
            meter.wait += time.perf_counter() - t0
            if figure is not None:
                save_mask_figure(batch, figure)
                figure = None
            yield batch
        epoch, done = epoch + 1, 0


def _save(state: TrainState, step: int, loss: float, name: str = "last.pt") -> Path | None:
    """Write the run's checkpoint ``name`` atomically (process 0 only)."""
    if not dist.is_main():
        return None
    target = dist.unwrap(state.target) if state.target is not None else None
    ckpt = checkpoint.make_checkpoint(
        state.cfg,
        state.plan,
        step,
        state.online,
        target,
        state.optimizer,
        state.scaler,
        loss=loss,
    )
    return checkpoint.save_atomic(ckpt, Path(state.cfg.train.out) / name)


def _resume(state: TrainState, ckpt: dict, path: Path, run_dir: Path) -> tuple[int, float]:
    """Load ``ckpt`` into the state; returns (step to continue from, its last logged loss)."""
    target = dist.unwrap(state.target) if state.target is not None else None
    try:
        step = checkpoint.restore(ckpt, state.online, target, state.optimizer, state.scaler)
    except RuntimeError as err:  # load_state_dict: missing / unexpected keys, shapes
        detail = " ".join(str(err).split())
        raise ResumeMismatchError(
            f"cannot resume from {path}: its weights do not fit this model: "
            f"{detail[:300]}{'...' if len(detail) > 300 else ''}"
        ) from err
    log.info("resumed from %s at step %d", path, step)
    return step, _last_logged_loss(ckpt, run_dir, step)


def _last_logged_loss(ckpt: dict, run_dir: Path, step: int) -> float:
    """The loss a resumed run had last logged: the checkpoint's ``extra.loss``, else the last
    ``metrics.jsonl`` record up to ``step``, else NaN."""
    loss = (ckpt.get("extra") or {}).get("loss")
    if loss is not None:
        return float(loss)
    try:
        rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("step", 0) <= step]
        return float(rows[-1]["loss"]) if rows else float("nan")
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def _remove_stale_temps(run_dir: Path) -> None:
    stale = remove_stale_temps(run_dir)
    if stale:
        names = ", ".join(p.name for p in stale)
        log.info(
            "removed %d stale temporary file(s) of an interrupted save in %s: %s",
            len(stale),
            run_dir,
            names,
        )


def _log_plan(cfg: Config, plan: RunPlan, device, step: int) -> None:
    batch = cfg.data.batch_size
    log.info(
        "run folder %s: %d steps of %d images (%d per process-step), %s on %s, world %d",
        cfg.train.out,
        plan.total_steps,
        batch,
        plan.local_batch,
        cfg.loss.method,
        device,
        dist.world_size(),
    )
    log.info(
        "plan: %d steps = %.1f epochs of %d images, %d images seen%s",
        plan.total_steps,
        plan.total_steps / plan.steps_per_epoch,
        plan.steps_per_epoch * batch,
        plan.total_steps * batch,
        f" (from step {step}: {max(plan.total_steps - step, 0)} to go)" if step else "",
    )


class _Progress:
    """The progress bar (rate and ETA). Its output must neither stop training nor its final save
    when the terminal or the pipe (``| tee``) has gone away: the bar is switched off instead."""

    def __init__(self, total: int, initial: int, enabled: bool):
        kwargs = dict(total=total, initial=initial, disable=not enabled, desc="pretrain")
        try:
            self.bar = tqdm(dynamic_ncols=True, **kwargs)
        except (OSError, ValueError):  # the terminal / pipe is already gone
            self.bar = tqdm(**{**kwargs, "disable": True})

    def _call(self, fn, *args, **kwargs) -> None:
        if self.bar.disable:
            return
        try:
            fn(*args, **kwargs)
        except (OSError, ValueError):  # BrokenPipeError, EIO, write to a closed file
            self.bar.disable = True

    def update(self) -> None:
        self._call(self.bar.update, 1)

    def postfix(self, **values) -> None:
        self._call(self.bar.set_postfix, **values)

    def close(self) -> None:
        self._call(self.bar.close)
