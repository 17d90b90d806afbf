"""``detcon export CKPT --format FMT --out FILE``: backbone weights for other frameworks.

Formats: torchvision, timm, detectron2, safetensors, mmdet and mmseg (an OpenMMLab checkpoint
with backbone.-prefixed torchvision names; details in :mod:`detcon.export`, config fragments for
detectron2, mmdetection and mmsegmentation in docs/evaluation.md). Each file is verified (read
back, compared bit-for-bit, loaded into a reference model, forward pass compared) before it is
moved into place.
"""

from __future__ import annotations

# = detcon.export.FORMATS (a test checks), listed here so that ``--help`` does not import torch
FORMATS = ("torchvision", "timm", "detectron2", "safetensors", "mmdet", "mmseg")


def add_parser(subparsers) -> None:
    from detcon.commands._help import HelpFormatter, plain

    p = subparsers.add_parser(
        "export",
        help="export backbone weights (verified)",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="detcon pretraining checkpoint")
    p.add_argument("--format", choices=FORMATS, required=True, help="file format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument(
        "--which",
        choices=["online", "target"],
        default="online",
        help="which network's backbone: the online one (what the paper evaluates) or the EMA "
        "target",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from detcon.export import export_checkpoint

    info = export_checkpoint(args.checkpoint, args.format, args.out, args.which)
    print(
        f"exported {info['arch']} ({info['num_tensors']} tensors) as {info['format']} to "
        f"{info['path']}; verified against {info['framework']}"
    )
    return 0
