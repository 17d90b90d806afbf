"""Overrides for a tiny CPU pretraining run (ResNet-18, 64 px, batch 4, small heads, 4 masks),
shared by the training and resume tests."""

TINY_TRAIN = [
    "data.data=synthetic:8",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "model.backbone=resnet18",
    "model.proj_hidden=64",
    "model.proj_dim=32",
    "model.pred_hidden=64",
    "masks.num_masks=4",
    "train.device=cpu",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.progress=false",
    "train.log_every=1",
]


def without_masks(overrides: list[str], method: str) -> list[str]:
    """``overrides`` for ``loss.method=method``: byol and simclr fix the masks themselves (an
    explicit ``masks.*`` value that conflicts is an error), so those entries are dropped."""
    if method not in ("byol", "simclr"):
        return list(overrides)
    return [o for o in overrides if not o.startswith("masks.")]
