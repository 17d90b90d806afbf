"""``--help`` text for the commands: plain text from reST docstrings, and the defaults shown."""

from __future__ import annotations

import argparse
import re

__all__ = ["HelpFormatter", "plain"]

_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str:
    """A docstring without reST markup: ``:mod:`a.b``` -> ``a.b`` (``~a.b`` -> ``b``), double
    back-quoted literals -> the bare text, a trailing ``::`` -> ``:``."""

    def role(m: re.Match) -> str:
        target = m[1]
        return target.rsplit(".", 1)[-1] if m[0].find("`~") >= 0 else target

    text = _ROLE.sub(role, text or "")
    text = _LITERAL.sub(r"\1", text)
    return re.sub(r"::(\s*\n)", r":\1", text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends ``(default: X)`` to every option with
    help text and a meaningful default (not None, not a switch's bool, not a required option,
    not already mentioned in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
            or action.required
        ):
            return text
        return f"{text} (default: %(default)s)"
