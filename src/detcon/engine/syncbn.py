"""Batch norm with statistics over ALL processes (official: cross-replica BN, section 5).

On CUDA we use :class:`torch.nn.SyncBatchNorm`. PyTorch's SyncBatchNorm refuses CPU tensors,
so for CPU / gloo runs (tests, small clusters) :class:`GlobalBatchNorm` computes the same
thing with a differentiable all-reduce of ``(sum x, sum x^2, count)``:
``mean = E[x]``, ``var = E[x^2] - E[x]^2`` over the global batch (the official formula).
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import nn

from detcon.distributed import sum_across_processes


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
        if not (self.training and tdist.is_available() and tdist.is_initialized()):
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
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / max(float(n) - 1.0, 1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
                self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


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
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
