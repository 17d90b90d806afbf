"""Models: backbones, mask pooling, projector and predictor heads, the DetCon network and the
EMA target update.

Names are resolved lazily from the submodules listed in ``_EXPORTS`` so that importing
the package stays cheap (and the heavy torchvision imports happen on first use).
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_EXPORTS = {
    "mask_pool": "pooling",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
