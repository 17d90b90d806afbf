"""Lazy package namespaces: a package lists ``public name -> submodule`` and gets a module
``__getattr__`` / ``__dir__`` that import the submodule on first use (PEP 562), so importing
a package stays cheap and heavy dependencies load only when they are needed."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """Return ``(__getattr__, __dir__)`` for ``package`` resolving names through ``exports``."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
