"""``detcon eval {linear,knn,segment,detect}``: transfer evaluation of a backbone.

Every sub-command takes the backbone from ``--checkpoint CKPT`` or ``--backbone-weights
torchvision|random`` and writes a JSON result (protocol, backbone source, config, metrics) to
``--out`` or next to the checkpoint. Protocol details: ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import logging
import os


def _common(p: argparse.ArgumentParser, *, image_size: int, batch_size: int, epochs: int) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="detcon pretraining checkpoint (.pt)")
    src.add_argument(
        "--backbone-weights",
        choices=["torchvision", "random"],
        help="baseline backbones: torchvision supervised ImageNet (from the local "
        "torch hub cache only; never downloaded) or random init",
    )
    p.add_argument(
        "--arch",
        default="resnet50",
        help="architecture for --backbone-weights (checkpoints record their own)",
    )
    p.add_argument(
        "--which",
        choices=["online", "target"],
        default="online",
        help="which network of the checkpoint to evaluate",
    )
    p.add_argument("--data", required=True, help="dataset root (layout: see docs/evaluation.md)")
    p.add_argument("--out", help="result JSON path (default: next to the checkpoint)")
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="transfer evaluation (linear, knn, segment, detect)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)

    p = sub.add_parser("linear", help="linear probe on cached frozen features (ImageFolder)")
    _common(p, image_size=224, batch_size=256, epochs=100)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--probe-batch-size", type=int, default=1024)
    p.set_defaults(func=run, protocol="linear")

    p = sub.add_parser("knn", help="weighted kNN on frozen features (ImageFolder)")
    _common(p, image_size=224, batch_size=256, epochs=0)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.set_defaults(func=run, protocol="knn")

    p = sub.add_parser("segment", help="semantic segmentation (PASCAL VOC or Cityscapes layout)")
    _common(p, image_size=513, batch_size=16, epochs=45)
    p.add_argument(
        "--mode",
        choices=["linear", "finetune"],
        default="finetune",
        help="linear: 1x1 conv on frozen features; finetune: FCN, all layers",
    )
    p.add_argument("--lr", type=float, default=None, help="default 0.02 (finetune) / 0.1 (linear)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--dataset",
        choices=["voc", "cityscapes"],
        default=None,
        help="default: auto-detect (ROOT/leftImg8bit -> cityscapes, ROOT/JPEGImages -> voc)",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="default 21 (voc) / 19 (cityscapes)"
    )
    p.add_argument(
        "--train-split", default="train", help="voc: train or train_aug, ...; cityscapes: train"
    )
    p.add_argument("--val-split", default="val")
    p.add_argument(
        "--no-dilation",
        action="store_true",
        help="keep output stride 32 (default: dilate layer3/4, output stride 8)",
    )
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many steps")
    p.set_defaults(func=run, protocol="segment")

    p = sub.add_parser("detect", help="Mask R-CNN + FPN detection on COCO layout")
    _common(p, image_size=800, batch_size=16, epochs=0)
    p.add_argument("--images", help="training images dir (default ROOT/train2017)")
    p.add_argument(
        "--val-images", help="validation images dir (default: --images if given, else ROOT/val2017)"
    )
    p.add_argument("--train-json", help="default ROOT/annotations/instances_train2017.json")
    p.add_argument("--val-json", help="default ROOT/annotations/instances_val2017.json")
    p.add_argument("--max-iters", type=int, default=90_000, help="1x schedule: 90k at batch 16")
    p.add_argument("--lr", type=float, default=0.02, help="for batch 16; scaled linearly")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-iters", type=int, default=1000)
    p.add_argument(
        "--frozen-bn",
        action="store_true",
        help="FrozenBatchNorm2d in the backbone (default: BN trained, SyncBN in DDP)",
    )
    p.add_argument(
        "--max-size", type=int, default=None, help="longest side (default 1333 * image-size / 800)"
    )
    p.add_argument("--max-detections", type=int, default=100, help="per image (COCO: 100)")
    p.add_argument("--eval-only", action="store_true", help="skip training (sanity check)")
    p.set_defaults(func=run, protocol="detect")


def run(args) -> int:
    from detcon.evaluation.common import default_result_path, write_result

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and args.workers > cores:  # one line here instead of a warning per DataLoader
        logging.getLogger("detcon.eval").warning(
            "--workers %d is more than the %d cores available: using %d", args.workers, cores, cores
        )
        args.workers = cores
    if args.protocol == "linear":
        from detcon.evaluation.linear import run_linear as job
    elif args.protocol == "knn":
        from detcon.evaluation.knn import run_knn as job
    elif args.protocol == "segment":
        from detcon.evaluation.segmentation import run_segmentation as job
    else:
        from detcon.evaluation.detection import run_detection as job
    result = job(args)
    if result is None:  # non-main process of a distributed run
        return 0
    path = write_result(result, default_result_path(args, args.protocol))
    summary = ", ".join(
        f"{k}={v:.4f}" for k, v in result["metrics"].items() if isinstance(v, float)
    )
    print(f"{args.protocol}: {summary}\nresult written to {path}")
    return 0
