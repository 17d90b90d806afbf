"""``detcon pretrain``: self-supervised pretraining (DetCon_B, DetCon_S, BYOL, SimCLR).

Without arguments it runs the CPU quickstart recipe (``quickstart_cpu``: ResNet-18, 64 px, a
few dozen steps on scikit-image's sample photographs). Under ``torchrun`` the same command runs
data-parallel: ``torchrun --nproc_per_node=8 -m detcon pretrain --config detcon_b_imagenet_300ep``.
"""

from __future__ import annotations

import argparse
import logging

QUICKSTART = "quickstart_cpu"

# command-line flag (argparse dest) -> config key
FLAG_KEYS = {
    "data": "data.data",
    "masks": "masks.source",
    "method": "loss.method",
    "backbone": "model.backbone",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "steps": "train.steps",
    "epochs": "train.epochs",
    "out": "train.out",
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (DetCon_B / DetCon_S / BYOL / SimCLR)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help=f"YAML file or shipped recipe name (default: {QUICKSTART})")
    p.add_argument("--data", help="image folder, 'builtin' or 'synthetic:N'")
    p.add_argument("--masks", help="mask cache folder, or fh | grid | coco | whole")
    p.add_argument("--method", choices=["detcon_b", "detcon_s", "byol", "simclr"])
    p.add_argument("--backbone", help="resnet18 | resnet34 | resnet50 | resnet101 | ...")
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int, help="GLOBAL batch over all processes")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive, help="optimizer steps (>= 1)")
    length.add_argument("--epochs", type=_positive, help="epochs (>= 1)")
    p.add_argument("--out", help="run folder")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN_DIR/last.pt (or, if it is missing or damaged, the newest kept "
        "step_*.pt that loads); a new or empty RUN_DIR starts from step 0",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a RUN_DIR that already holds a run: its files (last.pt, step_*.pt, "
        "metrics.jsonl, tb/, config.yaml, pictures) are MOVED into RUN_DIR/replaced-DATE-TIME/, "
        "not deleted. Without --resume or --overwrite such a RUN_DIR is refused",
    )
    p.add_argument("--list-recipes", action="store_true", help="print the shipped recipes")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.base_lr=0.3")
    p.set_defaults(func=run)
    return p


def overrides_from_args(args) -> list[str]:
    """Flags first, then the explicit ``key=value`` overrides (which win)."""
    out = [
        f"{key}={getattr(args, dest)}"
        for dest, key in FLAG_KEYS.items()
        if getattr(args, dest, None) is not None
    ]
    if args.epochs is not None:
        out.append("train.steps=0")  # --epochs wins over a recipe's fixed step count
    if args.resume:
        out.append("train.resume=auto")
    return out + list(args.overrides)


def run(args) -> int:
    from detcon.config import ConfigError, load_config, recipe_names
    from detcon.metrics_log import setup_logging

    setup_logging()
    log = logging.getLogger("detcon.pretrain")
    if args.list_recipes:
        print("\n".join(recipe_names()))
        return 0
    overrides = overrides_from_args(args)
    log.info(
        "config: %s%s",
        args.config or f"{QUICKSTART} (no --config given)",
        f" + {' '.join(overrides)}" if overrides else "",
    )
    try:
        cfg = load_config(args.config or QUICKSTART, overrides)
    except ConfigError as err:
        log.error("config error: %s", err)
        return 2
    from detcon import distributed
    from detcon.checkpoint import CheckpointCorruptError
    from detcon.runs import ResumeError
    from detcon.train import NonFiniteLossError, train

    main = True
    try:
        summary = train(cfg, overwrite=getattr(args, "overwrite", False))
        main = distributed.is_main()  # before destroy(): afterwards every rank says rank 0
    except (ConfigError, FileNotFoundError, ResumeError, CheckpointCorruptError) as err:
        log.error("%s", err)
        return 2
    except NonFiniteLossError as err:
        log.error("%s", err)
        return 3
    finally:
        distributed.destroy()
    if not main:  # under torchrun only rank 0 prints the summary
        return 0
    run_dir = summary["run_dir"]
    if summary.get("finished_before"):
        state = "already finished"
    elif summary["stopped"]:
        state = "stopped early (resume with --resume)"
    else:
        state = "finished"
    loss = summary["loss"]
    loss_text = "no loss logged" if loss != loss else f"last logged loss {loss:.4f}"  # NaN
    log.info(
        "%s at step %d in %.1f s (%s)\n"
        "  checkpoint:   %s\n  config:       %s/config.yaml\n  metrics:      %s/metrics.jsonl "
        "(TensorBoard: tensorboard --logdir %s/tb)\n  mask picture: %s/masks.png\n"
        "  loss curve:   %s/loss.png",
        state,
        summary["step"],
        summary["seconds"],
        loss_text,
        summary["checkpoint"],
        run_dir,
        run_dir,
        run_dir,
        run_dir,
        run_dir,
    )
    return 0
