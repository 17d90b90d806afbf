"""Distributed helpers. Every function is a no-op (or the identity) on one process.

Model and loss code never import :mod:`torch.distributed`; the training step gathers targets
with :func:`all_gather` and hands them to the pure loss with ``batch_offset = rank() * B``.
"""

from __future__ import annotations

import datetime
import os
from typing import cast

import torch
import torch.distributed as dist
from torch import nn


def is_dist() -> bool:
    """True when a process group is initialised and has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def pick_device(name: str | None = "auto") -> torch.device:
    """The device a job runs on: ``"auto"`` (or None) is this process's GPU when CUDA is
    available (``LOCAL_RANK`` under torchrun), else the CPU; ``"cuda"`` is this process's GPU;
    anything else is ``torch.device(name)``. Asking for CUDA without it is an error."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available; use cpu")
        return torch.device("cuda", local_rank()) if name == "cuda" else torch.device(name)
    return torch.device(name)


def init_from_env(backend: str | None = None, timeout_minutes: int = 30) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Returns True when running distributed. Without ``WORLD_SIZE`` > 1 in the environment it
    does nothing and returns False. The backend defaults to NCCL when CUDA is available, gloo
    otherwise; on CUDA the current device is set to ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return dist.get_world_size() > 1


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over processes and returns this
    process's slice, so each process receives the gradient of the *sum* of all processes'
    losses with respect to its own rows (DDP then averages, giving the global-mean gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather(x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Concatenate ``x`` from all processes along dim 0, in rank order.

    Every process must pass the same shape. With ``grad=True`` gradients flow back to each
    process's own rows (see :class:`_AllGatherWithGrad`); otherwise the result is detached.
    On one process this returns ``x`` itself (detached when ``grad=False``).
    """
    if not is_dist():
        return x if grad else x.detach()
    if grad:
        return _AllGatherWithGrad.apply(x)
    with torch.no_grad():
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward sums the gradients too (every process's output depends
    on every process's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_across_processes(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over all processes (the identity on one process)."""
    return _AllReduceSum.apply(x) if is_dist() else x


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (a copy; the input is untouched)."""
    if not is_dist():
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's wrapper
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


# ---- batch norm with statistics over ALL processes (official: cross-replica BN).
# On CUDA: torch.nn.SyncBatchNorm. It refuses CPU tensors, so for CPU / gloo runs (tests, small
# clusters) GlobalBatchNorm computes the same thing with a differentiable all-reduce of
# (sum x, sum x^2, count): mean = E[x], var = E[x^2] - E[x]^2 over the global batch (the
# official formula).


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over inputs ``[N, C, *]`` whose training statistics are global over the default
    process group (identity to BatchNorm on one process). Running stats use the unbiased global
    variance, like torch's BatchNorm."""

    cross_process = True  # read by detcon.model.heads.weighted_batch_norm

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # float64 stays float64
        count = torch.tensor([x.numel() / x.shape[1]], dtype=xf.dtype, device=x.device)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])  # [2C + 1]
        stats = sum_across_processes(stats)  # gradient flows back to every process
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        update_running_stats_(self, mean, var, n)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def update_running_stats_(
    bn: nn.modules.batchnorm._NormBase, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor
) -> None:
    """BatchNorm's running-statistics update from a batch's ``mean`` and biased ``var`` over
    ``n`` values per channel (the unbiased variance goes into ``running_var``), as torch's
    BatchNorm does it, momentum None included (a cumulative average). Shared by
    :class:`GlobalBatchNorm` and :func:`detcon.model.heads.weighted_batch_norm`; nothing
    happens when the norm tracks no running statistics."""
    if not (
        bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.num_batches_tracked is not None
    ):  # the three buffers are registered (or set to None) together
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
        bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), m)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), m)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by a cross-process one: SyncBatchNorm on CUDA, GlobalBatchNorm
    elsewhere. Parameters and running statistics are carried over."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        out = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        if module.track_running_stats:
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(out, buf).copy_(getattr(module, buf))
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
