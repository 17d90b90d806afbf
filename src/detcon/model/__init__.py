"""Models: backbones, mask pooling, projector and predictor heads, the DetCon network and the
EMA target update.

Names are resolved lazily from the submodules listed in ``_EXPORTS`` so that importing
the package stays cheap (and the heavy torchvision imports happen on first use).
"""

from __future__ import annotations

from detcon._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "Backbone": "backbone",
    "backbone_names": "backbone",
    "build_backbone": "backbone",
    "load_torchvision_weights": "backbone",
    "binary_masks": "pooling",
    "mask_pool": "pooling",
    "MLP": "heads",
    "trunc_normal_fan_in_": "heads",
    "DetConNet": "detcon",
    "DetConOutput": "detcon",
    "make_target": "detcon",
    "ema_update_": "ema",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
