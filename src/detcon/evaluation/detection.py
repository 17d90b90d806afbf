"""Detection and instance segmentation transfer: torchvision Mask R-CNN + FPN on our backbone.

The backbone's ``layer1..layer4`` feed torchvision's ``BackboneWithFPN`` (256 channels, extra
max-pool level), and ``MaskRCNN`` adds the RPN, box and mask heads. All backbone layers are
fine-tuned; BN is trained (converted to SyncBN under DDP) or, with ``frozen_bn``, replaced by
``FrozenBatchNorm2d`` holding the pretrained statistics. Recipe ("1x"): 90k iterations at batch
16, SGD momentum 0.9, lr 0.02 (scaled linearly with the batch), weight decay 1e-4, linear warmup
over 1000 iterations from 0.001x, lr x0.1 at 2/3 and 8/9 of training (60k, 80k). Metrics: box AP
and mask AP from ``pycocotools.cocoeval.COCOeval``. Runs under ``torchrun`` (DDP) or on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detcon import distributed as dist
from detcon.evaluation.config import DetectEvalConfig

log = logging.getLogger(__name__)


def build_mask_rcnn(
    backbone: nn.Module,
    num_classes: int,
    *,
    frozen_bn: bool = False,
    min_size: int = 800,
    max_size: int = 1333,
    max_detections: int = 100,
) -> nn.Module:
    """Mask R-CNN with FPN on ``backbone`` (modified in place). ``num_classes`` excludes the
    background. Images are resized so the short side is ``min_size`` (long side capped at
    ``max_size``) and normalised inside the model with the ImageNet mean/std; at most
    ``max_detections`` per image are kept (COCO's standard 100)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if frozen_bn:
        backbone = _freeze_bn(backbone, FrozenBatchNorm2d)
    c = int(cast(Any, backbone).out_channels)  # a ResNet trunk's channel count
    fpn = BackboneWithFPN(
        backbone,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[c // 8, c // 4, c // 2, c],
        out_channels=256,
        extra_blocks=LastLevelMaxPool(),
    )
    return MaskRCNN(
        fpn,
        num_classes=num_classes + 1,
        min_size=min_size,
        max_size=max_size,
        box_detections_per_img=max_detections,
    )


def _freeze_bn(module: nn.Module, frozen_cls) -> nn.Module:
    """Replace every ``BatchNorm2d`` by ``frozen_cls`` carrying the same affine and stats."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = frozen_cls(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_bn(child, frozen_cls)
    return module


def lr_factor(step: int, max_iters: int, warmup_iters: int) -> float:
    """Step schedule of the 1x recipe: linear warmup from 0.001, x0.1 at 2/3 and 8/9."""
    factor = 0.1 ** sum(step >= m for m in (max_iters * 2 // 3, max_iters * 8 // 9))
    if step < warmup_iters:
        factor *= 0.001 + (1 - 0.001) * step / warmup_iters
    return factor


def predictions_to_coco(outputs, image_ids, cat_ids, mask_threshold: float = 0.5) -> list[dict]:
    """Convert torchvision detection outputs (``boxes`` xyxy, ``labels`` 1..K, ``scores``,
    optional ``masks`` float[N,1,H,W]) into COCO result dicts (bbox xywh, RLE segmentation)."""
    from pycocotools import mask as mask_utils

    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        masks = out.get("masks")
        for j, (box, label, score) in enumerate(
            zip(xywh, out["labels"].tolist(), out["scores"].tolist(), strict=True)
        ):
            r = {
                "image_id": int(image_id),
                "category_id": int(cat_ids[label - 1]),
                "bbox": [round(v, 3) for v in box],
                "score": float(score),
            }
            if masks is not None:
                binary = (masks[j, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
                rle = mask_utils.encode(np.asfortranarray(binary))
                rle["counts"] = rle["counts"].decode("ascii")
                r["segmentation"] = rle
            results.append(r)
    return results


def coco_evaluate(coco_gt, results: list[dict], iou_types=("bbox", "segm")) -> dict:
    """AP / AP50 / AP75 per IoU type with ``COCOeval`` (0.0 when there are no detections)."""
    from pycocotools.cocoeval import COCOeval

    metrics = {}
    for iou_type in iou_types:
        prefix = "box" if iou_type == "bbox" else "mask"
        if not results:
            metrics.update({f"{prefix}_AP": 0.0, f"{prefix}_AP50": 0.0, f"{prefix}_AP75": 0.0})
            continue
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        s = [max(float(v), 0.0) for v in ev.stats[:3]]  # -1 means "no ground truth": report 0
        metrics.update({f"{prefix}_AP": s[0], f"{prefix}_AP50": s[1], f"{prefix}_AP75": s[2]})
    return metrics


@torch.no_grad()
def evaluate_detection(model: nn.Module, dataset, device) -> dict:
    """Box and mask AP of ``model`` on ``dataset`` (each process takes a strided shard; the
    results are gathered on the main process, which alone returns metrics)."""
    model.eval()
    shard = torch.utils.data.Subset(dataset, range(dist.rank(), len(dataset), dist.world_size()))
    from detcon.evaluation.coco import collate

    results = []
    for images, targets in tqdm(
        DataLoader(shard, batch_size=1, collate_fn=collate),
        desc="detect/eval",
        unit="img",
        disable=not dist.is_main(),
    ):
        outputs = model([im.to(device) for im in images])
        results += predictions_to_coco(outputs, [t["image_id"] for t in targets], dataset.cat_ids)
    if dist.is_dist():
        gathered: list[list | None] = [None] * dist.world_size()
        torch.distributed.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part or []]
    return coco_evaluate(dataset.coco, results) if dist.is_main() else {}


def _infinite(loader, sampler):
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _train_loader(dataset, batch_size: int, workers: int, seed: int):
    """``(loader, sampler)``: this process's share of the global ``batch_size``; the sampler
    is a ``DistributedSampler`` under DDP, else None (the loader shuffles)."""
    from detcon.evaluation.coco import collate

    per_rank = batch_size // dist.world_size()
    if per_rank < 1 or per_rank * dist.world_size() != batch_size:
        raise ValueError(f"--batch-size {batch_size} must be a multiple of {dist.world_size()}")
    sampler: torch.utils.data.DistributedSampler | None = (
        torch.utils.data.DistributedSampler(dataset, seed=seed) if dist.is_dist() else None
    )
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} training images < per-process batch {per_rank}")
    return loader, sampler


def train_detection(
    model,
    dataset,
    *,
    device,
    max_iters: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_iters: int,
    workers: int,
    seed: int,
) -> float:
    """SGD on the 1x step schedule for ``max_iters`` iterations of global batch
    ``batch_size`` (split over the processes). Returns the last total loss."""
    loader, sampler = _train_loader(dataset, batch_size, workers, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    model.train()
    batches = _infinite(loader, sampler)
    loss = torch.tensor(float("nan"))
    bar = tqdm(
        range(max_iters),
        desc="detect/train",
        unit="it",
        disable=not dist.is_main(),
        dynamic_ncols=True,
    )
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, max_iters, warmup_iters)
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [
            {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets
        ]
        losses = model(images, targets)  # dict of the RPN / box / mask losses
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at iteration {step}: { {k: v.item() for k, v in losses.items()} }"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.4f}")
    return loss.item()


def coco_paths(cfg: DetectEvalConfig) -> dict[str, Path]:
    """Training / validation images and annotation files of ``cfg``, with the COCO defaults
    under ``cfg.data`` for those not given (``images`` serves validation too when given)."""
    root = Path(cfg.data)
    return {
        "train_images": Path(cfg.images or root / "train2017"),
        "val_images": Path(cfg.val_images or cfg.images or root / "val2017"),
        "train_json": Path(cfg.train_json or root / "annotations" / "instances_train2017.json"),
        "val_json": Path(cfg.val_json or root / "annotations" / "instances_val2017.json"),
    }


def _prepare_model(
    cfg: DetectEvalConfig, backbone: nn.Module, num_classes: int, device, distributed: bool
) -> tuple[nn.Module, nn.Module, bool]:
    """Mask R-CNN on ``backbone`` moved to ``device``; returns ``(model, train_model,
    sync_bn)`` where ``train_model`` is ``model`` wrapped in DDP when distributed."""
    model = build_mask_rcnn(
        backbone,
        num_classes,
        frozen_bn=cfg.frozen_bn,
        min_size=cfg.image_size,
        max_size=_max_size(cfg),
        max_detections=cfg.max_detections,
    )
    sync_bn = distributed and not cfg.frozen_bn and device.type == "cuda"
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif distributed and not cfg.frozen_bn:  # SyncBatchNorm is GPU-only in PyTorch
        log.warning("DDP on CPU: BN statistics stay per-process (no SyncBN on CPU)")
    model.to(device)
    train_model = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model, train_model, sync_bn


def _max_size(cfg: DetectEvalConfig) -> int:
    return cfg.max_size or round(cfg.image_size * 1333 / 800)


def _lr(cfg: DetectEvalConfig) -> float:
    return cfg.lr * cfg.batch_size / 16  # linear scaling from the batch-16 recipe


def _config_record(cfg: DetectEvalConfig, paths, sync_bn, world, train_set, val_set) -> dict:
    """Every hyperparameter the run used, with the derived ones resolved (for the JSON)."""
    return {
        "max_iters": cfg.max_iters,
        "batch_size": cfg.batch_size,
        "lr": _lr(cfg),
        "base_lr_batch16": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "warmup_iters": cfg.warmup_iters,
        "lr_steps": [cfg.max_iters * 2 // 3, cfg.max_iters * 8 // 9],
        "min_size": cfg.image_size,
        "max_size": _max_size(cfg),
        "frozen_bn": cfg.frozen_bn,
        "max_detections": cfg.max_detections,
        "sync_bn": sync_bn,
        "world_size": world,
        "train_json": str(paths["train_json"]),
        "val_json": str(paths["val_json"]),
        "num_train": len(train_set),
        "num_val": len(val_set),
    }


def run_detection(cfg: DetectEvalConfig) -> dict | None:
    """``detcon eval detect``: fine-tune Mask R-CNN on the train JSON, AP on the val JSON.
    Under torchrun every process trains; only the main process returns the result."""
    from detcon.evaluation.coco import CocoInstances
    from detcon.evaluation.common import backbone_from_config, check_config

    check_config(cfg, DetectEvalConfig)
    paths = coco_paths(cfg)
    device = dist.pick_device(cfg.device)  # this process's GPU (LOCAL_RANK) under torchrun
    distributed = dist.init_from_env(backend=None if device.type == "cuda" else "gloo")
    try:
        torch.manual_seed(cfg.seed + dist.rank())
        backbone, source = backbone_from_config(cfg)
        train_set = CocoInstances(
            paths["train_images"], paths["train_json"], train=True, seed=cfg.seed + dist.rank()
        )
        val_set = CocoInstances(paths["val_images"], paths["val_json"], train=False)
        if val_set.cat_ids != train_set.cat_ids:
            raise ValueError("train and val annotation files have different category ids")
        model, train_model, sync_bn = _prepare_model(
            cfg, backbone, train_set.num_classes, device, distributed
        )
        last_loss = float("nan")
        if not cfg.eval_only:
            last_loss = train_detection(
                train_model,
                train_set,
                device=device,
                max_iters=cfg.max_iters,
                batch_size=cfg.batch_size,
                lr=_lr(cfg),
                weight_decay=cfg.weight_decay,
                warmup_iters=min(cfg.warmup_iters, cfg.max_iters),
                workers=cfg.workers,
                seed=cfg.seed,
            )
        metrics = evaluate_detection(model, val_set, device)
        main_process, world = dist.is_main(), dist.world_size()
    finally:
        dist.destroy()
    if not main_process:
        return None
    metrics["final_train_loss"] = last_loss
    return {
        "protocol": "detect-maskrcnn-fpn",
        "backbone": source,
        "config": _config_record(cfg, paths, sync_bn, world, train_set, val_set),
        "metrics": metrics,
    }
