"""Linear probe on cached frozen features.

Protocol (documented in ``docs/evaluation.md``): features are extracted once (see
:mod:`detcon.evaluation.features`), standardised with the training set's per-channel mean and
std, and a linear layer is trained on them with mini-batch SGD (momentum 0.9, Nesterov, cosine
learning-rate decay, cross-entropy). No augmentation: this is the cheap "cached features"
variant, not the 90-epoch augmented protocol; numbers are therefore a few points lower than
papers that train on augmented crops. The backbone is verified bit-identical afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from detcon.evaluation.config import LinearEvalConfig
from detcon.evaluation.metrics import topk_accuracy


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 1024,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Train ``standardise -> nn.Linear(C, num_classes)`` on ``train_features`` [N, C].

    Returns an ``nn.Sequential(Standardize, Linear)`` in eval mode that maps features [M, C]
    to logits [M, num_classes].
    """
    if train_features.ndim != 2 or train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features must be [N, C] with N labels")
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f"labels outside [0, {num_classes})")
    x = train_features.float().to(device)
    y = train_labels.long().to(device)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(x.shape[1], num_classes).to(device)
    nn.init.zeros_(linear.weight)  # convex problem: zero start makes the result seed-free
    nn.init.zeros_(linear.bias)
    opt = torch.optim.SGD(
        linear.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    xs = (x - mean) / std  # [N, C]
    step = 0
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", dynamic_ncols=True):
        perm = torch.randperm(x.shape[0], generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            for group in opt.param_groups:  # cosine decay, a pure function of the step
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(linear(xs[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return nn.Sequential(Standardize(mean, std), linear).eval()


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed per-channel statistics (buffers)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def run_linear(cfg: LinearEvalConfig) -> dict:
    """``detcon eval linear``: features once, probe trained on train/, top-1/5 on val/."""
    from detcon.distributed import pick_device
    from detcon.evaluation.common import (
        assert_unchanged,
        backbone_from_config,
        check_config,
        snapshot_state,
    )
    from detcon.evaluation.features import image_folder_features

    check_config(cfg, LinearEvalConfig)
    device = pick_device(cfg.device)
    backbone, source = backbone_from_config(cfg)
    before = snapshot_state(backbone)
    feats = image_folder_features(
        backbone,
        cfg.data,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        device=device,
    )
    probe = train_linear_probe(
        feats["train"][0],
        feats["train"][1],
        feats["num_classes"],
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.probe_batch_size,
        seed=cfg.seed,
        device=device,
    )
    with torch.no_grad():
        val_logits = probe(feats["val"][0].to(device)).cpu()
        train_logits = probe(feats["train"][0].to(device)).cpu()
    assert_unchanged(backbone, before)  # the probe must never touch the backbone
    metrics = topk_accuracy(val_logits, feats["val"][1])
    metrics["train_top1"] = topk_accuracy(train_logits, feats["train"][1], ks=(1,))["top1"]
    config = {
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "probe_batch_size": cfg.probe_batch_size,
        "image_size": cfg.image_size,
        "optimizer": "sgd-nesterov-cosine",
        "standardize": True,
        "num_train": len(feats["train"][1]),
        "num_val": len(feats["val"][1]),
    }
    return {
        "protocol": "linear",
        "backbone": source,
        "config": config,
        "metrics": metrics,
        "backbone_unchanged": True,
    }
