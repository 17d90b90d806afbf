"""Typed configurations of the evaluation protocols, one frozen dataclass per protocol.

``detcon eval PROTOCOL`` builds one from its parsed arguments (option ``--image-size`` for
field ``image_size``; same defaults, checked by the tests). From Python, construct a config
with keywords and pass it to the protocol's ``run_*`` function::

    from detcon.evaluation import KnnEvalConfig, run_knn

    result = run_knn(KnnEvalConfig(checkpoint="run/last.pt", data="/data/imagenet", k=20))

Configs are frozen: a protocol never changes its config; values it derives (the segmentation
class count, the detection learning rate after batch scaling, ...) are recorded in the
result's ``config`` instead. Invalid values raise ``ValueError`` at construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

BACKBONE_WEIGHTS = ("torchvision", "random")
WHICH = ("online", "target")
SEGMENT_MODES = ("linear", "finetune")
SEGMENT_DATASETS = ("voc", "cityscapes")


def _at_least(cfg: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What every protocol shares: the backbone source, the data root, workers, device, seed
    and output. Exactly one of ``checkpoint`` and ``backbone_weights`` is given."""

    checkpoint: str | os.PathLike | None = None
    """A detcon pretraining checkpoint (``.pt``); architecture, width and padding are read
    from it."""
    backbone_weights: str | None = None
    """A baseline instead of a checkpoint: ``"torchvision"`` (supervised ImageNet weights for
    ``arch``, read from the local torch hub cache only, never downloaded) or ``"random"``
    (initialised with ``seed``)."""
    arch: str = "resnet50"
    """Architecture for ``backbone_weights`` (a checkpoint records its own)."""
    which: str = "online"
    """Which network of the checkpoint to evaluate: ``"online"`` or ``"target"``."""
    data: str | os.PathLike
    """Dataset root (the layouts are in ``docs/evaluation.md``). Required."""
    out: str | os.PathLike | None = None
    """Result JSON path; None: ``<checkpoint stem>.eval_<protocol>.json`` next to the
    checkpoint, else ``eval_<protocol>_<weights>_<arch>.json`` in the working directory."""
    workers: int = 4
    """DataLoader worker processes (``detcon eval`` caps it at the available cores)."""
    device: str = "auto"
    """``"auto"`` (this process's GPU when CUDA is available, ``LOCAL_RANK`` under torchrun;
    else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    seed: int = 0
    """Seed of the head or probe, the data order and ``backbone_weights="random"``."""

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.backbone_weights is None):
            raise ValueError("give exactly one of checkpoint (--checkpoint) or backbone_weights")
        if self.backbone_weights is not None and self.backbone_weights not in BACKBONE_WEIGHTS:
            raise ValueError(
                f"backbone_weights must be one of {BACKBONE_WEIGHTS}, got {self.backbone_weights!r}"
            )
        if self.which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, got {self.which!r}")
        if not str(self.data):
            raise ValueError("data (the dataset root) must not be empty")
        _at_least(self, 0, "workers")


@dataclass(frozen=True, kw_only=True)
class LinearEvalConfig(EvalConfig):
    """``detcon eval linear``: a linear probe on cached frozen features of an ImageFolder."""

    image_size: int = 224
    """Centre-crop size; the short side is first resized to ``image_size * 256 / 224``."""
    batch_size: int = 256
    """Images per batch of the feature extraction."""
    epochs: int = 100
    """Passes of the probe over the cached training features."""
    lr: float = 0.1
    """Peak learning rate of the probe (SGD, momentum 0.9, Nesterov, cosine decay)."""
    weight_decay: float = 0.0
    """Weight decay of the probe."""
    probe_batch_size: int = 1024
    """Features per optimizer step of the probe."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "image_size", "batch_size", "epochs", "probe_batch_size")


@dataclass(frozen=True, kw_only=True)
class KnnEvalConfig(EvalConfig):
    """``detcon eval knn``: temperature-weighted k-nearest-neighbour vote on frozen features."""

    image_size: int = 224
    """Centre-crop size; the short side is first resized to ``image_size * 256 / 224``."""
    batch_size: int = 256
    """Images per batch of the feature extraction."""
    k: int = 20
    """Number of nearest training images that vote."""
    temperature: float = 0.07
    """Each neighbour votes with weight ``exp(cosine similarity / temperature)``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "image_size", "batch_size", "k")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True, kw_only=True)
class SegmentEvalConfig(EvalConfig):
    """``detcon eval segment``: semantic segmentation on PASCAL VOC or Cityscapes layout."""

    image_size: int = 513
    """Side of the square random training crop."""
    batch_size: int = 16
    """Training images per step."""
    epochs: int = 45
    """Passes over the training split (``max_iters`` can stop earlier)."""
    mode: str = "finetune"
    """``"linear"``: 1x1 conv on frozen, standardised features; ``"finetune"``: FCN head,
    all layers trained."""
    lr: float | None = None
    """Peak learning rate (poly decay); None: 0.02 for finetune, 0.1 for linear."""
    weight_decay: float = 1e-4
    """SGD weight decay."""
    dataset: str | None = None
    """``"voc"`` or ``"cityscapes"``; None: detected from the layout of ``data``
    (``leftImg8bit/``: cityscapes, ``JPEGImages/``: voc)."""
    num_classes: int | None = None
    """Number of classes; None: 21 for VOC, 19 for Cityscapes (which admits no other)."""
    train_split: str = "train"
    """Training split (VOC: ``train``, ``train_aug``, ...)."""
    val_split: str = "val"
    """Evaluation split."""
    dilate: bool = True
    """finetune: dilate ``layer3``/``layer4`` (output stride 8); False keeps stride 32."""
    max_iters: int | None = None
    """Stop after this many steps; None: ``epochs`` alone decides."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "image_size", "batch_size", "num_classes", "max_iters")
        _at_least(self, 0, "epochs")
        if self.mode not in SEGMENT_MODES:
            raise ValueError(f"mode must be one of {SEGMENT_MODES}, got {self.mode!r}")
        if self.dataset is not None and self.dataset not in SEGMENT_DATASETS:
            raise ValueError(f"dataset must be one of {SEGMENT_DATASETS}, got {self.dataset!r}")

    @property
    def resolved_lr(self) -> float:
        """``lr``, or the mode's default when it is None (0.1 linear, 0.02 finetune)."""
        if self.lr is not None:
            return self.lr
        return 0.1 if self.mode == "linear" else 0.02


@dataclass(frozen=True, kw_only=True)
class DetectEvalConfig(EvalConfig):
    """``detcon eval detect``: Mask R-CNN + FPN fine-tuning on COCO layout (the 1x recipe)."""

    image_size: int = 800
    """Short side of the resized images."""
    batch_size: int = 16
    """Global training batch (split over the processes under torchrun)."""
    images: str | os.PathLike | None = None
    """Training images folder; None: ``data/train2017``."""
    val_images: str | os.PathLike | None = None
    """Validation images folder; None: ``images`` when given, else ``data/val2017``."""
    train_json: str | os.PathLike | None = None
    """Training annotations; None: ``data/annotations/instances_train2017.json``."""
    val_json: str | os.PathLike | None = None
    """Validation annotations; None: ``data/annotations/instances_val2017.json``."""
    max_iters: int = 90_000
    """Training iterations (1x schedule: 90k at batch 16; lr x0.1 at 2/3 and 8/9)."""
    lr: float = 0.02
    """Learning rate for batch 16, scaled linearly with ``batch_size``."""
    weight_decay: float = 1e-4
    """SGD weight decay."""
    warmup_iters: int = 1000
    """Linear warmup iterations, from 0.001x."""
    frozen_bn: bool = False
    """FrozenBatchNorm2d in the backbone; False: BN trained (SyncBN under DDP on GPUs)."""
    max_size: int | None = None
    """Longest side of the resized images; None: ``1333 * image_size / 800``."""
    max_detections: int = 100
    """Detections kept per image (COCO's standard 100)."""
    eval_only: bool = False
    """Skip training (a sanity check of the evaluation)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "image_size", "batch_size", "max_iters", "max_size", "max_detections")
        _at_least(self, 0, "warmup_iters")


# protocol name (the ``detcon eval`` sub-command) -> its config class
CONFIGS: dict[str, type[EvalConfig]] = {
    "linear": LinearEvalConfig,
    "knn": KnnEvalConfig,
    "segment": SegmentEvalConfig,
    "detect": DetectEvalConfig,
}
