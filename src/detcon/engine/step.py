"""Networks and the forward + loss of one training step (architecture.md, "Train step").

Methods: ``detcon_b`` / ``byol``: online predictor vs EMA target projections (targets gathered
without gradient); ``detcon_s`` / ``simclr``: one network, targets are its own projections
gathered WITH gradient. byol / simclr are the same with the whole-image mask (K = 1), where the
DetCon loss reduces to the NCE form with 2N-2 negatives per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detcon import distributed as dist
from detcon.engine.syncbn import convert_sync_batchnorm
from detcon.losses import detcon_loss
from detcon.masks import downsample_masks, sample_mask_ids
from detcon.model import DetConNet, build_backbone, make_target
from detcon.model.backbone import set_output_stride_

EMA_METHODS = ("detcon_b", "byol")


def uses_target(method: str) -> bool:
    """True for the BYOL-style methods (predictor + EMA target)."""
    return method in EMA_METHODS


class OnlineModel(nn.Module):
    """The trained module (what DDP wraps): the DetCon network plus an optional linear probe.

    ``forward(view_a, cells_a, ids_a, view_b, cells_b, ids_b) -> (out_a, out_b, logits)`` where
    ``logits`` ``[B, classes]`` is the probe on the DETACHED global feature of view a (official
    online classifier) or None. One forward per step keeps DDP's bookkeeping simple.
    """

    def __init__(self, net: DetConNet, num_classes: int = 0):
        super().__init__()
        self.net = net
        channels = net.backbone.out_channels
        self.probe = nn.Linear(channels, num_classes) if num_classes > 0 else None

    def forward(self, view_a, cells_a, ids_a, view_b, cells_b, ids_b):
        out_a = self.net(view_a, cells_a, ids_a)
        out_b = self.net(view_b, cells_b, ids_b)
        logits = self.probe(out_a.features.detach().float()) if self.probe is not None else None
        return out_a, out_b, logits


def build_models(cfg, device: torch.device, num_classes: int = 0):
    """(online: OnlineModel, target: DetConNet | None), SyncBN-converted when distributed."""
    m = cfg.model
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    backbone = build_backbone(m.backbone, width_multiplier=m.width_multiplier)
    set_output_stride_(backbone, m.output_stride)  # 32: unchanged (official)
    net = DetConNet(
        backbone,
        m.proj_hidden,
        m.proj_dim,
        predictor=uses_target(cfg.loss.method),
        pred_hidden=m.pred_hidden,
    )
    if dist.is_dist():  # BN statistics over the global batch, as the official cross-replica BN
        net = convert_sync_batchnorm(net, device)
    net = net.to(device)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    target = make_target(net) if uses_target(cfg.loss.method) else None
    probe_classes = num_classes if cfg.train.probe else 0
    return OnlineModel(net, probe_classes).to(device), target


def mask_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The mask-sampling generator of one step: a pure function of (seed, step, rank)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) * 4099 + rank)
    return gen


def prepare_masks(mask_a, mask_b, num_masks: int, grid: tuple[int, int], gen):
    """Region maps ``[B,S,S]`` -> ``(cells, ids)``: cell ids ``([B,h,w], [B,h,w])`` (majority
    vote) and K sampled ids per view ``([B,K], [B,K])``, drawn ONCE per view here and passed to
    both online and target."""
    cells = (downsample_masks(mask_a, grid), downsample_masks(mask_b, grid))  # [B, h, w] x 2
    ids = tuple(sample_mask_ids(c, num_masks, gen) for c in cells)  # [B, K] x 2
    return cells, ids


def forward_loss(model, target, views, cells, ids, cfg, labels=None):
    """Loss of this process for one micro-batch, and metrics (python floats are NOT synced).

    views/cells/ids: pairs ``(a, b)`` of ``[B,3,S,S]``, ``[B,h,w]``, ``[B,K]``.
    Returns ``(loss, contrastive_loss, probe_acc or None)``; ``loss`` includes the probe CE.
    """
    (view_a, view_b), (cells_a, cells_b), (ids_a, ids_b) = views, cells, ids
    out_a, out_b, logits = model(view_a, cells_a, ids_a, view_b, cells_b, ids_b)
    if target is not None:  # DetCon_B / BYOL: predictor vs EMA target, no gradient
        with torch.no_grad():
            tgt_a = dist.all_gather(target(view_a, cells_a, ids_a).proj)  # [N, K, D]
            tgt_b = dist.all_gather(target(view_b, cells_b, ids_b).proj)
        pred_a, pred_b = out_a.pred, out_b.pred  # [B, K, D]
    else:  # DetCon_S / SimCLR: own projections, gathered with gradient
        tgt_a = dist.all_gather(out_a.proj, grad=True)
        tgt_b = dist.all_gather(out_b.proj, grad=True)
        pred_a, pred_b = out_a.proj, out_b.proj
    contrastive = detcon_loss(
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
    )
    loss, acc = contrastive, None
    if logits is not None and labels is not None:
        loss = loss + F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
    return loss, contrastive.detach(), acc
