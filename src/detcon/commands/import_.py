"""``detcon import PATH --out OUT.pt``: a released official checkpoint as a detcon checkpoint.

Reads the official DetCon ``.npy`` files (``resnet50_detcon_b_imagenet_1k.npy``, ...) and the
BYOL ``pretrain_res50x1.pkl`` without JAX, haiku or the BYOL code, with a restricted unpickler
that refuses anything that could run code (:mod:`detcon.official`). The output holds the
backbone (TensorFlow SAME padding, recorded in the checkpoint) and the projector / predictor
when the file has them, for the online network and, where the file has one, the target.
``detcon export``, ``detcon eval`` and ``model.init_from=OUT.pt`` read it.
"""

from __future__ import annotations

import logging


def add_parser(subparsers) -> None:
    from detcon.commands._help import HelpFormatter, plain

    p = subparsers.add_parser(
        "import",
        help="convert an official DetCon / BYOL checkpoint (.npy / .pkl) to a detcon one",
        description=plain(__doc__),
        formatter_class=HelpFormatter,
    )
    p.add_argument("path", help="official checkpoint (.npy of a dict, or the BYOL .pkl)")
    p.add_argument("--out", required=True, help="detcon checkpoint to write (.pt)")
    p.set_defaults(func=run)


def run(args) -> int:
    from detcon import checkpoint, official
    from detcon.logs import setup_logging

    setup_logging()
    log = logging.getLogger("detcon.import")
    try:
        ckpt = official.to_checkpoint(args.path)
    except (official.UnsafeCheckpointError, official.OfficialFormatError, OSError) as err:
        log.error("%s", err)
        return 2
    out = checkpoint.save_atomic(ckpt, args.out)
    heads = sorted({k.split(".")[0] for k in ckpt["online"]} - {"backbone"})
    print(
        f"imported {ckpt['model']['backbone']} x{ckpt['model']['width_multiplier']} (SAME "
        f"padding; heads: {', '.join(heads) or 'none'}; target: "
        f"{'yes' if ckpt['target'] else 'no'}) to {out}"
    )
    return 0
