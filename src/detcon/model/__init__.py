"""Models: backbones, mask pooling, projector and predictor heads, the DetCon network and the
EMA target update.
"""

from __future__ import annotations

from detcon.model.backbone import (
    Backbone,
    backbone_names,
    build_backbone,
    load_torchvision_weights,
)
from detcon.model.detcon import (
    DetConNet,
    DetConOutput,
    make_target,
)
from detcon.model.ema import ema_update_
from detcon.model.heads import (
    MLP,
    trunc_normal_fan_in_,
)
from detcon.model.pooling import (
    binary_masks,
    mask_pool,
)

__all__ = [
    "Backbone",
    "backbone_names",
    "build_backbone",
    "load_torchvision_weights",
    "binary_masks",
    "mask_pool",
    "MLP",
    "trunc_normal_fan_in_",
    "DetConNet",
    "DetConOutput",
    "make_target",
    "ema_update_",
]
