"""LARS with bias/norm exclusion, and the official schedules as pure functions of the step.

Official values (DetCon-B, design notes section 7): base lr 0.2 scaled by batch/256 (3.2 at
batch 4096), momentum 0.9, trust coefficient eta 1e-3, weight decay 1.5e-6, linear warmup then
cosine decay to 0, target EMA rate cosine-increased from 0.996 to 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

# Modules whose parameters (scale/offset) are never decayed nor LARS-adapted.
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling, in the official order (optax chain of three steps).

    For each parameter ``p`` with gradient ``g``::

        u = g + weight_decay * p                       # skipped when lars_exclude
        u = u * eta * |p| / |u|   if |p| > 0 and |u| > 0 # trust ratio; skipped when lars_exclude
        mu = momentum * mu + u                         # mu starts at 0
        p = p - lr * mu

    ``|.|`` is the Frobenius norm of the whole tensor. A parameter group with
    ``lars_exclude=True`` (see :func:`param_groups`) gets momentum only. ``lr`` is read from the
    group at every step, so schedules set ``group["lr"]`` before ``step()``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1.5e-6,
        eta: float = 1e-3,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("LARS does not support sparse gradients")
            grads = [p.grad for p in params]
            updates: Sequence[torch.Tensor]
            if group["lars_exclude"]:
                updates = grads
            else:
                updates = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                p_norms = torch._foreach_norm(params)
                u_norms = torch._foreach_norm(updates)
                for u, pn, un in zip(updates, p_norms, u_norms, strict=True):
                    # Trust ratio on device (no host sync); 1 when either norm is zero.
                    ok = (pn > 0) & (un > 0)
                    u.mul_(torch.where(ok, group["eta"] * pn / torch.where(ok, un, 1.0), 1.0))
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, updates)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def _is_excluded(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    return isinstance(module, _NORM_TYPES) or name == "bias" or param.ndim <= 1


def param_groups(model: nn.Module, weight_decay: float | None = None) -> list[dict]:
    """Split trainable parameters for :class:`LARS` (official ``exclude_bias_and_norm``).

    Returns ``[{"params": weights}, {"params": others, "lars_exclude": True, "weight_decay": 0.0}]``
    where "others" are every bias, every parameter of a norm layer (BatchNorm, SyncBatchNorm,
    GroupNorm, LayerNorm, InstanceNorm) and any other 1-D parameter. ``weight_decay``, when
    given, is set on the first group (otherwise the optimizer default applies). Parameters with
    ``requires_grad=False`` are skipped, shared parameters appear once, empty groups are dropped.
    """
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    exclude: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (exclude if _is_excluded(module, name, param) else decay).append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay})
        if weight_decay is not None:
            groups[-1]["weight_decay"] = float(weight_decay)
    if exclude:
        groups.append({"params": exclude, "lars_exclude": True, "weight_decay": 0.0})
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


def _check_steps(step: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def lr_schedule(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Official learning rate: linear warmup from 0, then cosine decay to exactly 0.

    ``step/warmup * peak`` for ``step < warmup_steps``, else
    ``peak * (1 + cos(pi * min(step - warmup, T - warmup) / (T - warmup))) / 2`` with
    ``T = total_steps`` (lr(0) = 0, lr(warmup) = peak, lr(t >= T) = 0). The update at global
    step ``s`` (counted from 0) uses ``lr_schedule(s, ...)``.
    """
    _check_steps(step, total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps, got {warmup_steps}, {total_steps}"
        )
    if not peak_lr >= 0:
        raise ValueError(f"peak_lr must be >= 0, got {peak_lr}")
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps == 0:  # warmup fills the whole run: the cosine part is empty
        return 0.0
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_schedule(step: int, total_steps: int, base: float = 0.996) -> float:
    """Official target EMA rate ``1 - (1 - base) * (1 + cos(pi * min(step, T) / T)) / 2``.

    ``base`` at step 0, 1.0 from ``total_steps`` on. The target update is
    ``target <- tau * target + (1 - tau) * online``.
    """
    _check_steps(step, total_steps)
    if not 0 <= base <= 1:
        raise ValueError(f"base must be in [0, 1], got {base}")
    return 1.0 - (1.0 - base) * 0.5 * (
        1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)
    )
