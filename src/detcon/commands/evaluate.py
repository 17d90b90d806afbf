"""``detcon eval {linear,knn,segment,detect}``: transfer evaluation of a backbone.

Each sub-command's options are the fields of its config dataclass in
:mod:`detcon.evaluation.config` (option ``--image-size`` for field ``image_size``, the same
defaults; the tests check both match). :func:`config_from_args` builds the config from the
parsed arguments and the protocol's ``run_*`` function takes it. The parsers are written out
here rather than generated from the dataclasses so that ``detcon --help`` imports no torch.
Protocol details: ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

from detcon.commands._help import HelpFormatter

DESCRIPTION = """\
Transfer evaluation of one backbone, taken from --checkpoint CKPT (a detcon pretraining
checkpoint) or --backbone-weights torchvision|random. Every protocol writes a JSON result
(protocol, backbone source, config, metrics) to --out or next to the checkpoint; segment also
writes its per-class IoU chart and confusion matrix as PNG files next to the JSON. Protocols
and dataset layouts: docs/evaluation.md."""

PROTOCOL_HELP = {
    "linear": "linear probe on cached frozen features (ImageFolder train/ and val/)",
    "knn": "weighted kNN on frozen features (ImageFolder train/ and val/)",
    "segment": "semantic segmentation (PASCAL VOC or Cityscapes layout)",
    "detect": "Mask R-CNN + FPN detection and instance segmentation (COCO layout)",
}


def _common(
    p: argparse.ArgumentParser, *, image_size: tuple[int, str], batch_size: tuple[int, str]
) -> None:
    """The options of :class:`detcon.evaluation.config.EvalConfig` plus the two every
    protocol has with its own meaning and default: ``(default, help)`` of the image size and
    the batch size."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint",
        metavar="CKPT",
        help="detcon pretraining checkpoint (.pt); architecture, width and padding come from it",
    )
    src.add_argument(
        "--backbone-weights",
        choices=["torchvision", "random"],
        help="a baseline instead: torchvision supervised ImageNet weights (from the local "
        "torch hub cache only, never downloaded) or random init (seeded by --seed)",
    )
    p.add_argument("--arch", default="resnet50", help="architecture for --backbone-weights")
    p.add_argument(
        "--which",
        choices=["online", "target"],
        default="online",
        help="which network of the checkpoint to evaluate",
    )
    p.add_argument(
        "--data", required=True, metavar="ROOT", help="dataset root (layout: docs/evaluation.md)"
    )
    p.add_argument(
        "--out",
        metavar="JSON",
        help="result path (default: CKPT_STEM.eval_PROTOCOL.json next to the checkpoint)",
    )
    p.add_argument("--image-size", type=int, default=image_size[0], help=image_size[1])
    p.add_argument("--batch-size", type=int, default=batch_size[0], help=batch_size[1])
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        help="data-loading processes (capped at the available cores)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (this process's GPU if CUDA is available, else cpu), cpu, cuda or cuda:N",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the probe / head and data order")


_CROP = (224, "centre-crop size (the short side is resized to size*256/224 first)")
_FEATURE_BATCH = (256, "images per batch of the feature extraction")


def _add_linear(p: argparse.ArgumentParser) -> None:
    _common(p, image_size=_CROP, batch_size=_FEATURE_BATCH)
    p.add_argument("--epochs", type=int, default=100, help="passes over the cached features")
    p.add_argument("--lr", type=float, default=0.1, help="peak lr (SGD, Nesterov, cosine)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the probe")
    p.add_argument("--probe-batch-size", type=int, default=1024, help="features per probe step")


def _add_knn(p: argparse.ArgumentParser) -> None:
    _common(p, image_size=_CROP, batch_size=_FEATURE_BATCH)
    p.add_argument("--k", type=int, default=20, help="nearest training images that vote")
    p.add_argument(
        "--temperature", type=float, default=0.07, help="vote weight exp(cosine sim / T)"
    )


def _add_segment(p: argparse.ArgumentParser) -> None:
    _common(
        p,
        image_size=(513, "side of the square random training crop"),
        batch_size=(16, "training images per step"),
    )
    p.add_argument("--epochs", type=int, default=45, help="passes over the training split")
    p.add_argument(
        "--mode",
        choices=["linear", "finetune"],
        default="finetune",
        help="linear: 1x1 conv on frozen features; finetune: FCN, all layers trained",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="peak lr (default 0.02 finetune, 0.1 linear)"
    )
    p.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    p.add_argument(
        "--dataset",
        choices=["voc", "cityscapes"],
        default=None,
        help="dataset layout (default: detected, ROOT/leftImg8bit: cityscapes, ROOT/JPEGImages: voc)",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="classes (default 21 voc, 19 cityscapes)"
    )
    p.add_argument("--train-split", default="train", help="training split (voc: train, train_aug)")
    p.add_argument("--val-split", default="val", help="evaluation split")
    p.add_argument(
        "--no-dilation",
        dest="dilate",
        action="store_false",
        help="keep output stride 32 (default: finetune dilates layer3/layer4, output stride 8)",
    )
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many steps")


def _add_detect(p: argparse.ArgumentParser) -> None:
    _common(
        p,
        image_size=(800, "short side of the resized images"),
        batch_size=(16, "global training batch (split over the processes under torchrun)"),
    )
    p.add_argument("--images", help="training images folder (default ROOT/train2017)")
    p.add_argument(
        "--val-images", help="validation images (default: --images if given, else ROOT/val2017)"
    )
    p.add_argument("--train-json", help="default ROOT/annotations/instances_train2017.json")
    p.add_argument("--val-json", help="default ROOT/annotations/instances_val2017.json")
    p.add_argument("--max-iters", type=int, default=90_000, help="1x schedule: 90k at batch 16")
    p.add_argument("--lr", type=float, default=0.02, help="for batch 16; scaled linearly")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    p.add_argument("--warmup-iters", type=int, default=1000, help="linear warmup from 0.001x")
    p.add_argument(
        "--frozen-bn",
        action="store_true",
        help="FrozenBatchNorm2d in the backbone (default: BN trained, SyncBN in DDP on GPUs)",
    )
    p.add_argument(
        "--max-size", type=int, default=None, help="longest side (default 1333 * image-size / 800)"
    )
    p.add_argument("--max-detections", type=int, default=100, help="detections kept per image")
    p.add_argument("--eval-only", action="store_true", help="skip training (a sanity check)")


_ADDERS = {"linear": _add_linear, "knn": _add_knn, "segment": _add_segment, "detect": _add_detect}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="transfer evaluation (linear, knn, segment, detect)",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for protocol, add in _ADDERS.items():
        p = sub.add_parser(
            protocol,
            help=PROTOCOL_HELP[protocol],
            description=f"{PROTOCOL_HELP[protocol]}.\n\n{DESCRIPTION}",
            formatter_class=HelpFormatter,
        )
        add(p)
        p.set_defaults(func=run, protocol=protocol)


def config_from_args(args: argparse.Namespace, **override):
    """The protocol's config (:mod:`detcon.evaluation.config`) from parsed arguments; the
    keyword arguments replace fields."""
    import dataclasses

    from detcon.evaluation.config import CONFIGS

    cls = CONFIGS[args.protocol]
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**{**values, **override})


def _available_workers(requested: int) -> int:
    """``requested`` capped at the cores this process may use, with one log line (torch
    would otherwise warn once per DataLoader)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and requested > cores:
        logging.getLogger("detcon.eval").warning(
            "--workers %d is more than the %d cores available: using %d", requested, cores, cores
        )
        return cores
    return requested


def run(args) -> int:
    from detcon.evaluation.common import save_outputs
    from detcon.logs import setup_logging

    setup_logging()  # the one logging set-up (rank-0 filter, survives a closed pipe)
    cfg = config_from_args(args, workers=_available_workers(args.workers))
    job: Callable[[Any], dict | None]
    if args.protocol == "linear":
        from detcon.evaluation.linear import run_linear as job
    elif args.protocol == "knn":
        from detcon.evaluation.knn import run_knn as job
    elif args.protocol == "segment":
        from detcon.evaluation.segmentation import run_segmentation as job
    else:
        from detcon.evaluation.detection import run_detection as job
    result = job(cfg)
    if result is None:  # non-main process of a distributed run
        return 0
    path, *extra = save_outputs(result, cfg, args.protocol)
    summary = ", ".join(
        f"{k}={v:.4f}" for k, v in result["metrics"].items() if isinstance(v, float)
    )
    print(f"{args.protocol}: {summary}\nresult written to {path}")
    for figure in extra:
        print(f"figure written to {figure}")
    return 0
