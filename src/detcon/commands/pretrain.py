"""``detcon pretrain``: self-supervised pretraining (DetCon_B, DetCon_S, BYOL, SimCLR).

Without arguments it runs the CPU quickstart recipe (``quickstart_cpu``: ResNet-18, 64 px, a
few dozen steps on scikit-image's sample photographs). With ``--data DIR`` and no ``--config``
it chooses the settings from the device and the folder (GPU: ResNet-50, 224 px, bf16, a batch
that fits, epochs from the folder's size; CPU: small settings), prints them with the reasons
and records them in the run's ``config.yaml`` (:mod:`detcon.auto_settings`). Under
``torchrun`` the same command runs data-parallel:
``torchrun --nproc_per_node=8 -m detcon pretrain --config detcon_b_imagenet_300ep``.

Flags set the main config keys; ``KEY=VALUE`` sets any other (they win over the flags), e.g.
``optim.base_lr=0.3 data.subset=imagenet100 train.loggers=tensorboard,wandb``.
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
    from detcon.commands._help import HelpFormatter, plain

    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (DetCon_B / DetCon_S / BYOL / SimCLR)",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    recipe = "(default: the recipe's)"
    p.add_argument(
        "--config",
        help=f"YAML file or shipped recipe name (default: {QUICKSTART}, or settings chosen "
        "for the machine and the folder with --data DIR)",
    )
    p.add_argument("--data", help=f"image folder, 'builtin' or 'synthetic:N' {recipe} (data.data)")
    p.add_argument(
        "--masks",
        help="mask cache folder (detcon masks), or a generator: fh | grid | whole | coco | slic "
        "| quickshift | watershed, with parameters (fh:scale=500,min_size=200, "
        f"slic:n_segments=64,compactness=10), or a function module.sub:function {recipe}",
    )
    p.add_argument(
        "--method", choices=["detcon_b", "detcon_s", "byol", "simclr"], help=f"method {recipe}"
    )
    p.add_argument("--backbone", help=f"resnet18 | resnet34 | resnet50 | resnet101 | ... {recipe}")
    p.add_argument("--image-size", type=int, help=f"view side in pixels {recipe}")
    p.add_argument("--batch-size", type=int, help=f"GLOBAL batch over all processes {recipe}")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive, help=f"optimizer steps (>= 1) {recipe}")
    length.add_argument("--epochs", type=_positive, help=f"epochs (>= 1) {recipe}")
    p.add_argument("--out", help=f"run folder {recipe}")
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


def wants_auto_settings(args) -> bool:
    """``--data DIR`` (an image folder, not ``builtin`` / ``synthetic``) without ``--config``."""
    data = getattr(args, "data", None)
    return (
        args.config is None
        and data is not None
        and data != "builtin"
        and not str(data).startswith("synthetic")
    )


def run(args) -> int:
    from detcon.config import ConfigError, recipe_names
    from detcon.logs import setup_logging

    setup_logging()
    log = logging.getLogger("detcon.pretrain")
    if args.list_recipes:
        print("\n".join(recipe_names()))
        return 0
    try:
        cfg, recipe = build_config(args, log)
    except (ConfigError, FileNotFoundError) as err:
        log.error("%s%s", "config error: " if isinstance(err, ConfigError) else "", err)
        return 2
    from detcon.loggers import LoggerUnavailableError, check_available

    try:
        check_available(cfg.train.loggers)
    except LoggerUnavailableError as err:
        log.error("%s", err)
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
    if main:  # under torchrun only rank 0 prints the summary
        report(summary, recipe, log)
    return 0


def build_config(args, log):
    """(config, recipe name or None): the recipe (or, for ``--data`` without ``--config``,
    settings chosen for the machine and the folder), then the flags and ``key=value``
    overrides. Raises ``ConfigError`` / ``FileNotFoundError``."""
    from detcon.config import load_config

    overrides = overrides_from_args(args)
    auto = None
    if wants_auto_settings(args):
        from detcon.auto_settings import choose_settings

        auto = choose_settings(args.data, overrides)
        log.info(
            "no --config: settings chosen for %s on this machine (flags and key=value "
            "overrides win; recorded as train.auto_settings in config.yaml):\n  %s",
            args.data,
            "\n  ".join(auto.reasons),
        )
        overrides = auto.overrides + overrides
    recipe = None if auto is not None else args.config or QUICKSTART
    log.info(
        "config: %s%s",
        recipe or "defaults + the settings above",
        "" if args.config or auto else " (no --config given)",
    )
    if overrides:
        log.info("overrides: %s", " ".join(overrides))
    cfg = load_config(recipe, overrides)
    if auto is not None:
        cfg.train.auto_settings = auto.summary()
    return cfg, recipe


def report(summary: dict, recipe: str | None, log) -> None:
    """Where the run wrote what, and (for the quickstart) what its loss curve means."""
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
    note = trend_note(run_dir, summary["step"]) if recipe == QUICKSTART else ""
    if note:
        log.info("%s", note)


def trend_note(run_dir, steps: int) -> str:
    """For the quickstart: the logged loss at its start and end, and why its curve does not
    show learning (measured: a run with 10x the learning rate logs nearly the same values)."""
    from pathlib import Path

    from detcon.run_metrics import loss_trend

    path = Path(run_dir) / "metrics.jsonl"
    trend = loss_trend(path) if path.is_file() else None
    if trend is None:
        return ""
    k = trend["quarter"]
    return (
        f"loss: mean of the first {k} logged values {trend['first']:.3f}, of the last {k} "
        f"{trend['last']:.3f}. The quickstart's curve does not show learning, and is not "
        f"meant to: {steps} steps barely move the weights of a freshly initialised network "
        "(a run with 10x its learning rate logs nearly the same values), and the DetCon loss "
        "of one batch depends mostly on which photographs it holds and how many regions their "
        "views keep; its ups and downs are that batch-to-batch spread. The quickstart shows "
        "that the pipeline runs end to end; a falling curve needs far more steps than a "
        "one-minute CPU demonstration can take."
    )
