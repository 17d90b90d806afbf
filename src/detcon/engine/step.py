"""Networks and the forward + loss of one training step (architecture.md, "Train step").

Methods: ``detcon_b``: online predictor vs EMA target projections (targets gathered without
gradient), the DetCon loss; ``byol``: the same networks on the whole-image mask (K = 1, i.e.
global average pooling), BYOL's regression loss, no negatives, no gathering; ``detcon_s`` /
``simclr``: one network, targets are its own projections gathered WITH gradient (simclr is the
whole-image case, where the DetCon loss is NT-Xent with 2N-2 negatives per row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detcon import distributed as dist
from detcon.engine.syncbn import convert_sync_batchnorm
from detcon.losses import byol_loss, detcon_loss
from detcon.masks import downsample_masks, sample_mask_ids
from detcon.model import DetConNet, build_backbone, make_target
from detcon.model.backbone import set_output_stride_
from detcon.model.heads import trunc_normal_fan_in_
from detcon.model.init_from import init_from_

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
    backbone = build_backbone(
        m.backbone, width_multiplier=m.width_multiplier, init=m.init, padding=m.padding
    )
    set_output_stride_(backbone, m.output_stride)  # 32: unchanged (official)
    net = DetConNet(
        backbone,
        m.proj_hidden,
        m.proj_dim,
        predictor=uses_target(cfg.loss.method),
        pred_hidden=m.pred_hidden,
        head_init=m.init,
    )
    if m.init_from:  # existing weights for the online network (and so for the target)
        init_from_(net, m.init_from, strict=m.init_strict)
    if dist.is_dist():  # BN statistics over the global batch, as the official cross-replica BN
        net = convert_sync_batchnorm(net, device)
    net = net.to(device)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    target = None
    if uses_target(cfg.loss.method):  # official: the target has its own random init
        target = make_target(net, reinit=m.target_init == "random" and not m.init_from)
    probe_classes = num_classes if cfg.train.probe else 0
    online = OnlineModel(net, probe_classes)
    if online.probe is not None and m.init == "official":
        trunc_normal_fan_in_(online.probe.weight)
        nn.init.zeros_(online.probe.bias)
    return online.to(device), target


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


def forward_loss(model, target, views, cells, ids, cfg, labels=None):
    """Loss of this process for one micro-batch, and metrics (python floats are NOT synced).

    views/cells/ids: pairs ``(a, b)`` of ``[B,3,S,S]``, ``[B,h,w]``, ``[B,K]``.
    Returns ``(loss, contrastive_loss, probe_acc or None)``; ``loss`` includes the probe CE.
    """
    (view_a, view_b), (cells_a, cells_b), (ids_a, ids_b) = views, cells, ids
    out_a, out_b, logits = model(view_a, cells_a, ids_a, view_b, cells_b, ids_b)
    if cfg.loss.method == "byol":  # K = 1 whole-image vectors: the global-average-pooled path
        with torch.no_grad():
            tgt_a = target(view_a, cells_a, ids_a).proj[:, 0]  # [B, D], this process only
            tgt_b = target(view_b, cells_b, ids_b).proj[:, 0]
        contrastive = byol_loss(out_a.pred[:, 0], out_b.pred[:, 0], tgt_a, tgt_b)
        return _with_probe(contrastive, logits, labels)
    if target is not None:  # DetCon_B: predictor vs EMA target, no gradient
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
        distinct=cfg.loss.distinct,
    )
    return _with_probe(contrastive, logits, labels)


def _with_probe(contrastive, logits, labels):
    """(method loss + probe cross-entropy, detached method loss, probe accuracy or None)."""
    loss, acc = contrastive, None
    if logits is not None and labels is not None:
        loss = loss + F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
    return loss, contrastive.detach(), acc
