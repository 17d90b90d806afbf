"""One training step, the networks it trains, and the pieces of it (architecture.md, "Train
step"). :func:`train_step` is THE step: the pretraining loop (:mod:`detcon.train`) and every
benchmark call it.

Methods: ``detcon_b``: online predictor vs EMA target projections (targets gathered without
gradient), the DetCon loss; ``byol``: the same networks on the whole-image mask (K = 1, i.e.
global average pooling), BYOL's regression loss, no negatives, no gathering; ``detcon_s`` /
``simclr``: one network, targets are its own projections gathered WITH gradient (simclr is the
whole-image case, where the DetCon loss is NT-Xent with 2N-2 negatives per row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from detcon import distributed as dist
from detcon.config import WHOLE_IMAGE_METHODS, Config, RunPlan
from detcon.data.device_augment import augment_on_device, is_device_batch
from detcon.losses import byol_loss, detcon_loss
from detcon.masks import downsample_masks, sample_mask_ids
from detcon.model import DetConNet, build_backbone, ema_update_, make_target
from detcon.model.backbone import set_output_stride_
from detcon.model.heads import trunc_normal_fan_in_
from detcon.model.init_from import init_from_
from detcon.optim import LARS, ema_schedule, lr_schedule, param_groups

EMA_METHODS = ("detcon_b", "byol")


def uses_target(method: str) -> bool:
    """True for the BYOL-style methods (predictor + EMA target)."""
    return method in EMA_METHODS


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf. Raised BEFORE any update of the step (and after the BN
    statistics of the bad forward were undone), so the state in memory is the last good one;
    the loop saves it and adds the path to the message."""


class OnlineModel(nn.Module):
    """The trained module (what DDP wraps): the DetCon network plus an optional linear probe.

    ``forward(view_a, cells_a, ids_a, view_b, cells_b, ids_b) -> (out_a, out_b, logits)`` where
    ``logits`` ``[B, classes]`` is the probe on the DETACHED global feature of view a (official
    online classifier) or None. One forward per step keeps DDP's bookkeeping simple.
    """

    def __init__(self, net: DetConNet, num_classes: int = 0):
        super().__init__()
        self.net = net
        channels = cast(int, net.backbone.out_channels)  # DetConNet checked: a positive int
        self.probe = nn.Linear(channels, num_classes) if num_classes > 0 else None

    def forward(self, view_a, cells_a, ids_a, view_b, cells_b, ids_b):
        out_a = self.net(view_a, cells_a, ids_a)
        out_b = self.net(view_b, cells_b, ids_b)
        logits = self.probe(out_a.features.detach().float()) if self.probe is not None else None
        return out_a, out_b, logits


def build_models(cfg: Config, device: torch.device, num_classes: int = 0):
    """(online: OnlineModel, target: DetConNet | None), SyncBN-converted when distributed."""
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    backbone = build_backbone(
        cfg.model.backbone,
        width_multiplier=cfg.model.width_multiplier,
        init=cfg.model.init,
        padding=cfg.model.padding,
    )
    set_output_stride_(backbone, cfg.model.output_stride)  # 32: unchanged (official)
    net = DetConNet(
        backbone,
        cfg.model.proj_hidden,
        cfg.model.proj_dim,
        predictor=uses_target(cfg.loss.method),
        pred_hidden=cfg.model.pred_hidden,
        head_init=cfg.model.init,
    )
    if cfg.model.init_from:  # existing weights for the online network (and so for the target)
        init_from_(net, cfg.model.init_from, strict=cfg.model.init_strict)
    if dist.is_dist():  # BN statistics over the global batch, as the official cross-replica BN
        # the top module is not a norm, so it comes back as it is (its norms replaced)
        net = cast(DetConNet, dist.convert_sync_batchnorm(net, device))
    net = net.to(device)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    target = None
    if uses_target(cfg.loss.method):  # official: the target has its own random init
        target = make_target(
            net, reinit=cfg.model.target_init == "random" and not cfg.model.init_from
        )
    probe_classes = num_classes if cfg.train.probe else 0
    online = OnlineModel(net, probe_classes)
    if online.probe is not None and cfg.model.init == "official":
        trunc_normal_fan_in_(online.probe.weight)
        nn.init.zeros_(online.probe.bias)
    return online.to(device), target


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """LARS (official; bias and BN parameters excluded from decay and adaptation) or SGD. The
    learning rate is set by every step from the schedule; ``base_lr`` is only a placeholder."""
    groups = param_groups(model, cfg.optim.weight_decay)
    if cfg.optim.optimizer == "sgd":
        groups = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.SGD(
            groups,
            lr=cfg.optim.base_lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
    return LARS(
        groups,
        lr=cfg.optim.base_lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        eta=cfg.optim.eta,
    )


def autocast_for(cfg: Config, device: torch.device):
    """The one AMP context: bf16/fp16 autocast, or disabled (fp32; bf16 on CPU unless allowed)."""
    p = cfg.train.precision
    enabled = p != "fp32" and (device.type == "cuda" or cfg.train.cpu_autocast)
    dtype = torch.float16 if p == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


class BufferGuard:
    """Copies of the modules' buffers (BN running statistics) taken before each step, so that a
    forward pass that produced a non-finite loss (and already updated the running statistics
    with NaN) can be undone before the last good state is saved. Buffers are small (under 1 MB
    for ResNet-50 + heads); the copy is one fused ``_foreach_copy_``."""

    def __init__(self, *modules):
        self.live = [b for m in modules if m is not None for b in m.buffers()]
        self.saved = [b.detach().clone() for b in self.live]

    def snapshot(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    def restore(self) -> None:
        if self.live:
            with torch.no_grad():
                torch._foreach_copy_(self.live, self.saved)


@dataclass
class TrainState:
    """Everything one step updates. ``model`` is what runs the forward (``online``, or it
    wrapped by DDP and/or ``torch.compile``); ``online`` and ``target`` are unwrapped."""

    cfg: Config
    plan: RunPlan
    device: torch.device
    model: nn.Module
    online: OnlineModel
    target: DetConNet | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    guard: BufferGuard


def build_train_state(
    cfg: Config, plan: RunPlan, device: torch.device, num_classes: int = 0
) -> TrainState:
    """Networks, optimizer, grad scaler (fp16 only), DDP and ``torch.compile`` wrapping."""
    online, target = build_models(cfg, device, num_classes)
    model: nn.Module = online
    if dist.is_dist():
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(online, device_ids=ids)
    if cfg.train.compile:
        model = cast(nn.Module, torch.compile(model))  # a Module in, an OptimizedModule out
        target = torch.compile(target) if target is not None else None
    return TrainState(
        cfg=cfg,
        plan=plan,
        device=device,
        model=model,
        online=online,
        target=target,
        optimizer=build_optimizer(cfg, online),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16"),
        guard=BufferGuard(online, target),
    )


def mask_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A mask-sampling generator, a pure function of (seed, step, rank): used only for batches
    without per-image ``mask_u`` uniforms (benchmarks); training draws from those instead."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) * 4099 + rank)
    return gen


def prepare_masks(
    mask_a, mask_b, num_masks: int, grid: tuple[int, int], gen, uniforms=None, whole=False
):
    """Region maps ``[B,S,S]`` -> ``(cells, ids)``: cell ids ``([B,h,w], [B,h,w])`` (majority
    vote) and K sampled ids per view ``([B,K], [B,K])``, drawn ONCE per view here and passed to
    both online and target. ``uniforms`` ``[B,2,K]`` (the items' ``mask_u``) make the draws a
    function of each image; without them they come from ``gen``. ``whole=True`` (byol,
    simclr) ignores the maps: one region per image, so mask pooling is global average pooling
    whatever the dataset carries."""
    if whole:
        mask_a, mask_b = torch.zeros_like(mask_a), torch.zeros_like(mask_b)
    cells = (downsample_masks(mask_a, grid), downsample_masks(mask_b, grid))  # [B, h, w] x 2
    ids = tuple(
        sample_mask_ids(c, num_masks, gen, uniforms=None if uniforms is None else uniforms[:, v])
        for v, c in enumerate(cells)
    )  # [B, K] x 2
    return cells, ids


def forward_loss(model, target, views, cells, ids, cfg: Config, labels=None):
    """Loss of this process for one micro-batch, and metrics (python floats are NOT synced).

    views/cells/ids: pairs ``(a, b)`` of ``[B,3,S,S]``, ``[B,h,w]``, ``[B,K]``.
    Returns ``(loss, method_loss, probe_acc or None)``; ``loss`` includes the probe CE.
    """
    (view_a, view_b), (cells_a, cells_b), (ids_a, ids_b) = views, cells, ids
    out_a, out_b, logits = model(view_a, cells_a, ids_a, view_b, cells_b, ids_b)
    if cfg.loss.method == "byol":  # K = 1 whole-image vectors: the global-average-pooled path
        with torch.no_grad():
            tgt_a = target(view_a, cells_a, ids_a).proj[:, 0]  # [B, D], this process only
            tgt_b = target(view_b, cells_b, ids_b).proj[:, 0]
        method_loss = byol_loss(out_a.pred[:, 0], out_b.pred[:, 0], tgt_a, tgt_b)
        return _with_probe(method_loss, logits, labels)
    if target is not None:  # DetCon_B: predictor vs EMA target, no gradient
        with torch.no_grad():
            tgt_a = dist.all_gather(target(view_a, cells_a, ids_a).proj)  # [N, K, D]
            tgt_b = dist.all_gather(target(view_b, cells_b, ids_b).proj)
        pred_a, pred_b = out_a.pred, out_b.pred  # [B, K, D]
    else:  # DetCon_S / SimCLR: own projections, gathered with gradient
        tgt_a = dist.all_gather(out_a.proj, grad=True)
        tgt_b = dist.all_gather(out_b.proj, grad=True)
        pred_a, pred_b = out_a.proj, out_b.proj
    method_loss = detcon_loss(
        pred_a,
        pred_b,
        tgt_a,
        tgt_b,
        ids_a,
        ids_b,
        dist.all_gather(ids_a),
        dist.all_gather(ids_b),
        temperature=cfg.loss.temperature,
        local_negatives=cfg.loss.local_negatives,
        batch_offset=dist.rank() * view_a.shape[0],
        distinct=cfg.loss.distinct,
    )
    return _with_probe(method_loss, logits, labels)


def _with_probe(method_loss, logits, labels):
    """(method loss + probe cross-entropy, detached method loss, probe accuracy or None)."""
    loss, acc = method_loss, None
    if logits is not None and labels is not None:
        loss = loss + F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
    return loss, method_loss.detach(), acc


def to_device(
    batch: dict, device: torch.device, channels_last: bool
) -> tuple[
    tuple[torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
    torch.Tensor | None,
    torch.Tensor | None,
]:
    """A collated batch -> ``(views, masks, labels | None, mask uniforms | None)`` on ``device``.
    A batch of ``data.augment_on=device`` (uint8 views plus the colour parameters drawn in the
    workers) gets its colour ops, blur, solarize and normalisation here, batched on ``device``."""
    if is_device_batch(batch):
        batch = augment_on_device(batch, device, channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    view_a, view_b = (
        batch[k].to(device, non_blocking=True).to(memory_format=fmt) for k in ("view_a", "view_b")
    )
    mask_a, mask_b = (batch[k].to(device, non_blocking=True) for k in ("mask_a", "mask_b"))
    views, masks = (view_a, view_b), (mask_a, mask_b)
    labels = batch["label"].to(device, non_blocking=True) if "label" in batch else None
    uniforms = batch["mask_u"].to(device, non_blocking=True) if "mask_u" in batch else None
    return views, masks, labels, uniforms


def any_across_processes(*flags: torch.Tensor | bool, device: torch.device) -> list[bool]:
    """One collective so every process takes the same branch: flag i is True on all processes
    when it is True on any of them."""
    stacked = torch.stack([torch.as_tensor(f, dtype=torch.float32, device=device) for f in flags])
    return (dist.reduce_mean(stacked) > 0).tolist()


@dataclass
class StepOutput:
    """What one step reports: the method loss and probe accuracy of this process's last
    micro-batch (detached, not averaged across processes), the learning rate and EMA rate it
    used, and whether any process asked to stop (a signal)."""

    loss: torch.Tensor
    probe_acc: torch.Tensor | None
    lr: float
    tau: float
    stop: bool


def train_step(
    state: TrainState,
    batches: Iterator[dict],
    step: int,
    *,
    stop_requested: Callable[[], bool] = lambda: False,
) -> StepOutput:
    """Step ``step`` (0-based) of the schedule: ``train.grad_accum`` micro-batches from
    ``batches`` -> lr / tau -> masks -> forward -> loss -> finite check -> backward ->
    optimizer step -> EMA update.

    A non-finite loss on any process raises :class:`NonFiniteLossError` on all of them before
    any update (the BN statistics of that forward are undone). ``stop_requested()`` (this
    process got a signal) is read after the micro-batch is loaded and agreed on in the same
    collective as the finite check.
    """
    cfg, plan, t, device = state.cfg, state.plan, state.cfg.train, state.device
    lr = lr_schedule(step, plan.total_steps, plan.warmup_steps, plan.peak_lr)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    tau = ema_schedule(step, plan.total_steps, cfg.optim.ema_base)
    gen = mask_generator(t.seed, step, dist.rank(), device)
    side = cfg.data.image_size // cfg.model.output_stride
    whole = cfg.loss.method in WHOLE_IMAGE_METHODS
    state.guard.snapshot()
    for micro in range(t.grad_accum):
        views, masks, labels, u = to_device(next(batches), device, t.channels_last)
        cells, ids = prepare_masks(*masks, cfg.masks.num_masks, (side, side), gen, u, whole)
        last = micro == t.grad_accum - 1
        no_sync = dist.is_dist() and not last  # DDP all-reduces on the last micro-batch only
        # no_sync: state.model is DDP here (torch.compile's wrapper forwards the attribute)
        ddp = cast(nn.parallel.DistributedDataParallel, state.model)
        with ddp.no_sync() if no_sync else nullcontext():
            with autocast_for(cfg, device):
                loss, method_loss, acc = forward_loss(
                    state.model, state.target, views, cells, ids, cfg, labels
                )
            bad, stop = any_across_processes(
                ~torch.isfinite(loss.detach()), stop_requested(), device=device
            )
            if bad:  # checked BEFORE any update: the state in memory is the last good one
                state.guard.restore()  # undo the BN statistics of the bad forward
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (loss={loss.item()}, lr={lr:.4g}, "
                    f"tau={tau:.5f})"
                )
            state.scaler.scale(loss / t.grad_accum).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    if state.target is not None:
        ema_update_(dist.unwrap(state.target), state.online.net, tau)
    return StepOutput(loss=method_loss, probe_acc=acc, lr=lr, tau=tau, stop=stop)
