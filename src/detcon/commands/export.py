"""``detcon export CKPT --format FMT --out FILE``: backbone weights for other frameworks.

Formats: torchvision, timm, detectron2, safetensors (details in :mod:`detcon.export`). Each file
is verified (read back, compared bit-for-bit, loaded into a reference model, forward pass
compared) before it is moved into place.
"""

from __future__ import annotations

import argparse

# = detcon.export.FORMATS (a test checks), listed here so that ``--help`` does not import torch
FORMATS = ("torchvision", "timm", "detectron2", "safetensors")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export backbone weights (verified)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="detcon pretraining checkpoint")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--which", choices=["online", "target"], default="online")
    p.set_defaults(func=run)


def run(args) -> int:
    from detcon.export import export_checkpoint

    info = export_checkpoint(args.checkpoint, args.format, args.out, args.which)
    print(
        f"exported {info['arch']} ({info['num_tensors']} tensors) as {info['format']} to "
        f"{info['path']}; verified against {info['framework']}"
    )
    return 0
