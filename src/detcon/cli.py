"""Command-line entry point: ``detcon <command> ...``.

Each command lives in its own module under :mod:`detcon.commands` and exposes
``add_parser(subparsers)`` (registers its argparse sub-parser and sets ``func``) and the
function it registers. Building the parser imports no heavy module (a test checks that torch is
not imported): each command imports what it needs inside its ``run()``, so ``detcon --help``
answers in about 0.1 s.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command name -> module under detcon.commands
COMMANDS = {
    "pretrain": "pretrain",
    "masks": "masks",
    "show": "show",
    "eval": "evaluate",
    "export": "export",
    "import": "import_",
}


class _CommandParser(argparse.ArgumentParser):
    """Sub-command parser whose ``KEY=VALUE`` list (a ``nargs="*"`` positional) may be mixed
    with the flags, e.g. ``detcon pretrain optim.base_lr=0.3 --steps 1 x.y=z`` (plain argparse
    stops collecting the list at the first flag and then refuses ``x.y=z``)."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        positionals = self._get_positional_actions()
        if self._mixing or not any(a.nargs == argparse.ZERO_OR_MORE for a in positionals):
            return super().parse_known_args(args, namespace)
        self._mixing = True  # parse_known_intermixed_args calls parse_known_args itself
        try:
            return self.parse_known_intermixed_args(args, namespace)
        except argparse.ArgumentError as err:  # raised, not reported, on the intermixed path
            self.error(str(err))
        finally:
            self._mixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detcon",
        description="Efficient self-supervised pretraining with contrastive detection (DetCon).",
    )
    from detcon import __version__

    parser.add_argument("--version", action="version", version=f"detcon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for module in COMMANDS.values():
        importlib.import_module(f"detcon.commands.{module}").add_parser(sub)
    return parser


# Errors that mean "the input is wrong" (missing files, bad layouts, bad values): reported in
# one line with exit status 2 instead of a traceback. DETCON_DEBUG=1 shows the traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except USER_ERRORS as err:
        if os.environ.get("DETCON_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(
            f"detcon {args.command}: error: {message}\n(set DETCON_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
