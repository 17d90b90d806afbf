"""Pretraining job: ``train(cfg)`` reads top to bottom (data -> model -> optimizer -> resume ->
loop: lr/tau -> masks -> forward -> loss -> finite check -> backward -> step -> EMA -> log ->
checkpoint). The pieces live in :mod:`detcon.engine` and :mod:`detcon.metrics_log`.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from detcon import checkpoint
from detcon import distributed as dist
from detcon.config import WHOLE_IMAGE_METHODS, Config, resolve, save_yaml
from detcon.engine.data import build_dataset, build_loader, num_classes
from detcon.engine.state import (
    BufferGuard,
    ResumeMismatchError,
    StopFlag,
    check_fresh_start,
    check_resume_config,
    make_checkpoint,
    restore,
    select_resume,
)
from detcon.engine.step import build_models, forward_loss, mask_generator, prepare_masks
from detcon.fileio import remove_stale_temps
from detcon.metrics_log import (
    MetricsWriter,
    Throughput,
    memory_mb,
    read_metrics,
    save_loss_curve,
    save_mask_figure,
    setup_logging,
)
from detcon.model import ema_update_
from detcon.optim import LARS, ema_schedule, lr_schedule, param_groups

log = logging.getLogger("detcon.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good state was saved before raising."""


def autocast_for(cfg, device: torch.device):
    """The one AMP context: bf16/fp16 autocast, or disabled (fp32; bf16 on CPU unless allowed)."""
    p = cfg.train.precision
    enabled = p != "fp32" and (device.type == "cuda" or cfg.train.cpu_autocast)
    dtype = torch.float16 if p == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def build_optimizer(cfg, model: torch.nn.Module):
    o = cfg.optim
    groups = param_groups(model, o.weight_decay)
    if o.optimizer == "lars":
        return LARS(
            groups, lr=o.peak_lr, momentum=o.momentum, weight_decay=o.weight_decay, eta=o.eta
        )
    if o.optimizer == "sgd":
        groups = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.SGD(
            groups, lr=o.peak_lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    raise ValueError(f"optim.optimizer must be 'lars' or 'sgd', got {o.optimizer!r}")


def _agree(loss: torch.Tensor, stop: bool, device) -> tuple[bool, bool]:
    """One collective so every rank takes the same branch: (any non-finite loss, any signal)."""
    flags = torch.stack(
        [(~torch.isfinite(loss.detach())).float(), torch.tensor(float(stop), device=device)]
    )
    bad, signalled = (dist.reduce_mean(flags) > 0).tolist()
    return bad, signalled


def _to_device(batch: dict, device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    views = tuple(
        batch[k].to(device, non_blocking=True).to(memory_format=fmt) for k in ("view_a", "view_b")
    )
    masks = tuple(batch[k].to(device, non_blocking=True) for k in ("mask_a", "mask_b"))
    labels = batch["label"].to(device, non_blocking=True) if "label" in batch else None
    uniforms = batch["mask_u"].to(device, non_blocking=True) if "mask_u" in batch else None
    return views, masks, labels, uniforms


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


def _open_progress(**kwargs) -> tqdm:
    try:
        return tqdm(**kwargs)
    except (OSError, ValueError):  # the terminal / pipe is already gone
        return tqdm(**{**kwargs, "disable": True})


def train(cfg: Config, dataset=None, *, overwrite: bool = False) -> dict:
    """Run (or resume) pretraining; returns a summary dict (run_dir, checkpoint, step, loss,
    stopped, finished_before, seconds). ``dataset`` overrides ``cfg.data`` (tests).

    With ``train.resume=never`` a run folder that already holds a run (``last.pt``,
    ``step_*.pt`` or a non-empty ``metrics.jsonl``) is refused with
    :class:`~detcon.engine.state.RunExistsError`, unless ``overwrite``: the old run's files are
    then moved into ``RUN_DIR/replaced-YYYYmmdd-HHMMSS/``."""
    setup_logging()
    dist.init_from_env()
    rank, world, main = dist.rank(), dist.world_size(), dist.is_main()
    run_dir = Path(cfg.train.out)
    check_fresh_start(cfg, overwrite, move_aside=main)  # before anything is written
    device = dist.pick_device(cfg.train.device)
    start_time = time.perf_counter()
    # ---- data
    dataset = build_dataset(cfg) if dataset is None else dataset
    resolve(cfg, len(dataset), world)
    t, o = cfg.train, cfg.optim
    # ---- the checkpoint to resume from, checked against this config before anything is built
    resume_from, resume_ckpt = select_resume(cfg)
    if resume_ckpt is not None:
        check_resume_config(cfg, resume_ckpt, resume_from)
    if main:
        stale = remove_stale_temps(run_dir)
        if stale:
            log.info(
                "removed %d stale temporary file(s) of an interrupted save in %s: %s",
                len(stale),
                run_dir,
                ", ".join(p.name for p in stale),
            )
    loader, sampler = build_loader(dataset, cfg, rank, world, device)
    # ---- model, optimizer
    online, target = build_models(cfg, device, num_classes(dataset))
    optimizer = build_optimizer(cfg, online)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    model = online
    if dist.is_dist():
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(online, device_ids=ids)
    if t.compile:
        model = torch.compile(model)
        target = torch.compile(target) if target is not None else None
    # ---- resume
    step, loss_val = 0, float("nan")
    if resume_ckpt is not None:
        try:
            step = restore(
                resume_ckpt,
                online,
                dist.unwrap(target) if target is not None else None,
                optimizer,
                scaler,
            )
        except RuntimeError as err:  # load_state_dict: missing / unexpected keys, shapes
            detail = " ".join(str(err).split())
            raise ResumeMismatchError(
                f"cannot resume from {resume_from}: its weights do not fit this model: "
                f"{detail[:300]}{'...' if len(detail) > 300 else ''}"
            ) from err
        loss_val = _last_logged_loss(resume_ckpt, run_dir, step)
        del resume_ckpt
        log.info("resumed from %s at step %d", resume_from, step)
    finished_before = resume_from is not None and step >= t.total_steps
    if main:
        save_yaml(cfg, run_dir / "config.yaml")
        log.info(
            "run folder %s: %d steps of %d images (%d per process-step), %s on %s, world %d",
            run_dir,
            t.total_steps,
            cfg.data.batch_size,
            t.local_batch,
            cfg.loss.method,
            device,
            world,
        )
        images = t.total_steps * cfg.data.batch_size
        log.info(
            "plan: %d steps = %.1f epochs of %d images, %d images seen%s",
            t.total_steps,
            t.total_steps / t.steps_per_epoch,
            t.steps_per_epoch * cfg.data.batch_size,
            images,
            f" (from step {step}: {max(t.total_steps - step, 0)} to go)" if step else "",
        )

    def save(name: str = "last.pt") -> Path | None:
        if not main:
            return None
        ckpt = make_checkpoint(
            cfg,
            step,
            online,
            dist.unwrap(target) if target is not None else None,
            optimizer,
            scaler,
            loss=loss_val,
        )
        return checkpoint.save_atomic(ckpt, run_dir / name)

    def terminal(fn, *args, **kwargs) -> None:
        """Progress-bar output, which must neither stop training nor its final save when the
        terminal or the pipe (``| tee``) has gone away: the bar is switched off instead."""
        if pbar.disable:
            return
        try:
            fn(*args, **kwargs)
        except (OSError, ValueError):  # BrokenPipeError, EIO, write to a closed file
            pbar.disable = True

    # ---- loop
    side = cfg.data.image_size // cfg.model.output_stride
    grid, whole = (side, side), cfg.loss.method in WHOLE_IMAGE_METHODS
    stop, writer = StopFlag(), MetricsWriter(run_dir, start_step=step)
    guard = BufferGuard(online, target)
    pbar = _open_progress(
        total=t.total_steps,
        initial=step,
        disable=not (main and t.progress),
        desc="pretrain",
        dynamic_ncols=True,
    )
    epoch, skip = divmod(step, t.steps_per_epoch)
    session_steps, stopped, drew_masks = 0, False, None
    meter = Throughput(cfg.data.batch_size)
    try:
        while step < t.total_steps and not stopped:
            sampler.set_epoch(epoch, skip=skip * t.local_batch * t.grad_accum)
            batches = iter(loader)
            for _ in range(t.steps_per_epoch - skip):
                lr = lr_schedule(step, t.total_steps, o.warmup_steps, o.peak_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                tau = ema_schedule(step, t.total_steps, o.ema_base)
                gen = mask_generator(t.seed, step, rank, device)
                guard.snapshot()
                for micro in range(t.grad_accum):
                    t0 = time.perf_counter()
                    batch = next(batches)
                    meter.wait += time.perf_counter() - t0
                    if main and not drew_masks:  # the first batch's views and region maps
                        drew_masks = save_mask_figure(batch, run_dir / "masks.png")
                    views, masks, labels, u = _to_device(batch, device, t.channels_last)
                    cells, ids = prepare_masks(*masks, cfg.masks.num_masks, grid, gen, u, whole)
                    last = micro == t.grad_accum - 1
                    sync = model.no_sync() if dist.is_dist() and not last else nullcontext()
                    with sync:
                        with autocast_for(cfg, device):
                            loss, con, acc = forward_loss(
                                model, target, views, cells, ids, cfg, labels
                            )
                        bad, signalled = _agree(loss, stop.stop, device)
                        if bad:  # checked BEFORE any update: what we save is the last good state
                            guard.restore()  # undo the BN statistics of the bad forward
                            raise NonFiniteLossError(
                                f"non-finite loss at step {step} (loss={loss.item()}, lr={lr:.4g}, "
                                f"tau={tau:.5f}); last good state saved to {save()}"
                            )
                        scaler.scale(loss / t.grad_accum).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if target is not None:
                    ema_update_(dist.unwrap(target), online.net, tau)
                step, session_steps, meter.steps = step + 1, session_steps + 1, meter.steps + 1
                terminal(pbar.update, 1)
                if step % t.log_every == 0 or step == t.total_steps:
                    loss_val = dist.reduce_mean(con).item()
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": loss_val,
                        "lr": lr,
                        "tau": tau,
                        **meter.record(),
                        "memory_mb": memory_mb(device),
                    }
                    if acc is not None:
                        record["probe_acc"] = dist.reduce_mean(acc).item()
                    writer.write(record)
                    terminal(pbar.set_postfix, loss=f"{loss_val:.4f}", lr=f"{lr:.3g}")
                if t.keep_every and step % t.keep_every == 0:
                    save(f"step_{step:07d}.pt")
                stopped = signalled or (t.stop_after > 0 and session_steps >= t.stop_after)
                if step % t.ckpt_every == 0 or step == t.total_steps or stopped:
                    path = save()  # first save, then talk about it
                    if signalled and path is not None:
                        log.warning("stopped by a signal at step %d: saved %s", step, path)
                if stopped or step >= t.total_steps:
                    break
            epoch, skip = epoch + 1, 0
    finally:
        stop.close()
        terminal(pbar.close)
        writer.close()
    if main and (run_dir / "metrics.jsonl").exists():
        save_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    dist.barrier()
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / "last.pt"),
        "step": step,
        "loss": loss_val,
        "stopped": stopped,
        "finished_before": finished_before,
        "seconds": time.perf_counter() - start_time,
    }
