"""Typed pretraining configuration: grouped dataclasses, YAML loading, ``a.b=value`` overrides.

One :class:`Config` holds six groups (``data``, ``masks``, ``model``, ``loss``, ``optim``,
``train``). Defaults reproduce the official DetCon_B ImageNet recipe (see
``docs/official.md`` §7); the shipped recipes in ``detcon/configs/*.yaml``
only list what differs. The values a config implies for one run (total steps, warmup steps,
peak learning rate, per-process batch) are not config fields: :func:`resolve` computes them in
one place and returns them as a frozen :class:`RunPlan`.

Usage::

    cfg = load_config("detcon_b_imagenet_300ep", overrides=["optim.base_lr=0.3"])
    plan = resolve(cfg, dataset_size=len(dataset), world_size=2)  # frozen derived values
    save_yaml(cfg, "runs/x/config.yaml", plan); to_dict(cfg)  # plain dict for checkpoints
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from detcon.fileio import atomic_write

CONFIG_DIR = Path(__file__).parent / "configs"
# The closed choices, as ``Literal`` field types: checked once, when a config is loaded (a
# value outside them is a ConfigError naming the key, with a "did you mean").
Method = Literal["detcon_b", "detcon_s", "byol", "simclr"]
Precision = Literal["fp32", "bf16", "fp16"]
Init = Literal["official", "torchvision"]  # = detcon.model.heads.INITS
Padding = Literal["same", "torch"]  # = detcon.model.backbone.PADDINGS
TargetInit = Literal["random", "copy"]
Photometric = Literal["official", "torchvision", "none"]  # data.transforms.PHOTOMETRIC_MODES
Crop = Literal["official", "torchvision"]
Optimizer = Literal["lars", "sgd"]
AugmentOn = Literal["host", "device"]
METHODS = typing.get_args(Method)
PRECISIONS = typing.get_args(Precision)
INITS = typing.get_args(Init)
PADDINGS = typing.get_args(Padding)
TARGET_INITS = typing.get_args(TargetInit)
PHOTOMETRIC = typing.get_args(Photometric)
LOGGERS = ("tensorboard", "wandb", "mlflow", "none")  # = detcon.loggers.LOGGERS


@dataclass
class DataConfig:
    """Where images come from and how they are loaded."""

    data: str = "builtin"
    """Image source: a folder of images (recursive), ``builtin`` (scikit-image's sample
    photographs, no download) or ``synthetic:N`` (N random blocky images, for tests)."""
    coco_json: str = ""
    """COCO instances JSON (``data`` is then the images folder); needed by ``masks.source=coco``."""
    class_tree: bool = False
    """``data`` is ``root/<class>/...``: items carry labels (enables the online linear probe)."""
    crop: Crop = "official"
    """Crop window rule: ``official`` (clipped, no rejection) or ``torchvision``."""
    photometric: Photometric = "official"
    """Colour pipeline of the views: ``official`` (dm_pix semantics: additive brightness,
    per-channel contrast, HSV saturation / hue, clip after every op, zero-padded blur; the
    official recipe, default), ``torchvision`` (torchvision v2 semantics, a deviation) or
    ``none`` (no colour ops)."""
    antialias: bool = False
    """Low-pass filter before a downscaling resize of the crop. Official False: TF's bicubic
    ``tf.image.resize`` does not antialias (reproduced exactly, in float). True is torch's
    antialiased uint8 bicubic, a deviation that gives smoother views."""
    augment_on: AugmentOn = "host"
    """Where the colour ops, grayscale, blur, solarize and normalisation run: ``host`` (in the
    loader workers, per image; default) or ``device`` (workers only decode, crop, flip and
    resize, and hand uint8 views plus the drawn parameters to the training device, where the
    rest runs batched with the same distributions: 1.56x the images per worker core on
    the bundled photographs, docs/benchmarks.md)."""
    image_size: int = 224
    """Side S of each square view, pixels (official: 224)."""
    batch_size: int = 4096
    """GLOBAL batch (all processes, all accumulation micro-steps). Official: 4096."""
    num_workers: int = 8
    """DataLoader worker processes per training process (0 = load in the main process)."""
    pin_memory: bool = True
    """Page-locked host memory for faster host-to-GPU copies (ignored on CPU)."""
    persistent_workers: bool = True
    """Keep workers alive across epochs (only when num_workers > 0)."""
    repeat: int = 1
    """Repeat the dataset this many times per epoch (useful for the tiny builtin set)."""
    subset: str = ""
    """Train on part of ``data`` only: a text file with one entry a line, each a path relative
    to ``data`` (one image) or the name of a top-level folder of ``data`` (all its images: a
    class of a class tree); ``#`` starts a comment. A shipped list is named without a path:
    ``imagenet100`` (the 100 WordNet ids of the CMC paper's ImageNet-100). Empty = all."""
    fraction: float = 1.0
    """Keep this fraction of the images (after ``subset``), drawn without replacement by
    ``train.seed``: the same seed and file list give the same images. In (0, 1]; 1 = all."""


@dataclass
class MaskConfig:
    """Region maps and how many are sampled per view."""

    source: str = "fh"
    """``fh`` (Felzenszwalb, official), ``grid``, ``coco`` (ground truth), ``whole`` (one region
    per image: BYOL / SimCLR), or the path of a mask cache made by ``detcon masks``."""
    num_masks: int = 16
    """K: mask ids sampled per view, with replacement, uniformly over present ids (official 16)."""
    compute_missing: bool = False
    """With a mask cache: images without an entry get their map computed during training
    (True), or the run refuses before its first step, saying how many lack one (False)."""


@dataclass
class ModelConfig:
    """Backbone and heads."""

    backbone: str = "resnet50"
    """resnet18/34/50/101/152/200 (official: resnet50; resnet200 for the large checkpoint)."""
    width_multiplier: int = 1
    """Channel multiplier of the backbone."""
    output_stride: int = 32
    """Stride of the backbone features, i.e. feature grid = image_size / output_stride (official
    32: a 7x7 grid at 224 px). 16 or 8 dilate layer4 (and layer3) instead of striding: a finer
    grid for mask pooling on small images, at a higher cost. A deviation from the official
    model, for small-image settings; the weights are the same tensors at any stride."""
    init: Init = "official"
    """Weight initialisation: ``official`` (haiku's default: truncated normal at +-2 sigma,
    sigma = 1/sqrt(fan_in), zero biases, last BN of each residual branch zero) or
    ``torchvision`` (kaiming-normal convs, PyTorch's default linears; a deviation)."""
    padding: Padding = "same"
    """Convolution padding: ``same`` (official, TensorFlow/haiku SAME: the stem, max-pool and
    stride-2 convs pad 0 before / 1 after, 2/3 for the 7x7 stem) or ``torch`` (torchvision's
    symmetric padding, a deviation: every feature cell moves one input pixel relative to its
    mask cell). Same parameters either way; exports carry the weights only."""
    target_init: TargetInit = "random"
    """Target network at step 0: ``random`` (official: its own random initialisation) or
    ``copy`` (a copy of the online weights, as PyTorch BYOL ports do; a deviation)."""
    init_from: str = ""
    """Start from existing weights (continued pretraining; not ``--resume``): a detcon
    checkpoint, an official ``.npy`` / ``.pkl`` (as ``detcon import`` reads them), a torchvision
    or timm ResNet state dict, or ``.safetensors``. The online network gets them before step 0
    and the target starts as a copy of it (``model.target_init`` is then not used)."""
    init_strict: bool = True
    """With ``init_from``: the backbone's keys and shapes must match exactly (False: load what
    fits and log the missing and unexpected keys)."""
    proj_hidden: int = 4096
    """Projector hidden width (official 4096)."""
    proj_dim: int = 256
    """Projection / prediction output size D (official 256)."""
    pred_hidden: int = 4096
    """Predictor hidden width (official 4096); unused by detcon_s / simclr."""


@dataclass
class LossConfig:
    """Method and contrastive loss."""

    method: Method = "detcon_b"
    """``detcon_b`` (online predictor vs EMA target, the DetCon contrastive loss), ``detcon_s``
    (one network, no predictor, no EMA), ``byol`` (Grill et al.: global-average-pooled
    features, predictor vs EMA target, the normalised regression loss, no negatives) or
    ``simclr`` (NT-Xent on global features: DetCon_S with the whole-image mask). byol and
    simclr always use the whole-image mask with K = 1. The paper's whole-image *contrastive*
    ablation is ``detcon_b`` with ``masks.source=whole masks.num_masks=1``."""
    temperature: float = 0.1
    """Softmax temperature tau (official 0.1)."""
    local_negatives: bool = True
    """Use other masks of the same image as negatives (official True)."""
    distinct: bool = True
    """Compute the DetCon loss over distinct (image, id) pairs with their draw counts
    (``detcon_loss(distinct=True)``): the official value and gradients (mask-pooled rows of one
    id are equal vectors), with logits a few times smaller in each dimension. False runs the
    official computation on all ``B*K`` rows and ``2*N*K`` columns (a reference)."""


@dataclass
class OptimConfig:
    """Optimizer and schedules (pure functions of the step, see detcon.optim)."""

    optimizer: Optimizer = "lars"
    """``lars`` (official) or ``sgd`` (plain momentum SGD with the same param groups)."""
    base_lr: float = 0.2
    """Learning rate per 256 images; peak lr = base_lr * batch_size / 256 (official 0.2 -> 3.2)."""
    weight_decay: float = 1.5e-6
    """Weight decay on conv/linear weights only (official 1.5e-6; biases and BN excluded)."""
    momentum: float = 0.9
    """Momentum (official 0.9)."""
    eta: float = 1e-3
    """LARS trust coefficient (official 1e-3)."""
    warmup_epochs: int = -1
    """Linear warmup epochs; -1 = epochs // 100 as in the official code."""
    ema_base: float = 0.996
    """Initial target EMA rate tau, cosine-increased to 1 (official 0.996)."""


@dataclass
class TrainConfig:
    """Run length, precision, checkpoints and logging."""

    epochs: int = 1000
    """Epochs; ignored when ``steps`` > 0. Official default 1000 (300 in the short recipe)."""
    steps: int = 0
    """Optimizer steps; 0 = derive from epochs * dataset_size // batch_size (official)."""
    seed: int = 0
    """Seed of weights, data order, augmentations and mask sampling."""
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu``, ``cuda``."""
    precision: Precision = "fp32"
    """``fp32`` (official), ``bf16`` (autocast; the speed option on GPUs, a deviation) or
    ``fp16`` (autocast + GradScaler). bf16 falls back to fp32 on CPU unless ``cpu_autocast``
    is set. The losses are always computed in float32."""
    cpu_autocast: bool = False
    """Allow bf16 autocast on CPU (slow on most CPUs; off by default)."""
    channels_last: bool = True
    """NHWC memory format for the convolutions (faster on GPUs with tensor cores)."""
    compile: bool = False
    """Wrap the networks in torch.compile."""
    threads: int = 0
    """torch intra-op CPU threads of this process (``torch.set_num_threads``); 0 keeps torch's
    default (one per core). On a CPU shared with other jobs, 1 avoids thread oversubscription:
    the quickstart took 142 s with the default and 16 s with 1 thread on 2 busy cores."""
    grad_accum: int = 1
    """Gradient accumulation micro-steps per optimizer step. Each micro-batch has its own
    negatives, so the loss differs from a true large batch (documented deviation)."""
    probe: bool = True
    """Train an online linear probe on the detached global feature of view a when labels exist."""
    out: str = "runs/detcon"
    """Run folder: config.yaml, last.pt, metrics.jsonl, TensorBoard events, masks.png, loss.png."""
    resume: str = "never"
    """``never``, ``auto`` (resume from out/last.pt if present) or a checkpoint path."""
    ckpt_every: int = 1000
    """Save last.pt every this many steps (and at the end / on SIGTERM / SIGINT)."""
    keep_every: int = 0
    """Also keep step_XXXXXXX.pt every this many steps (0 = never)."""
    log_every: int = 10
    """Log metrics every this many steps."""
    stop_after: int = 0
    """Stop cleanly (save + exit) after this many steps in THIS invocation (0 = never), e.g. to
    fit a job time slot; resume continues."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0."""
    loggers: str = "tensorboard"
    """Comma-separated metric loggers beside ``metrics.jsonl``: ``tensorboard``, ``wandb``
    (Weights & Biases; ``WANDB_MODE=offline`` logs without an account), ``mlflow`` (into the
    run folder unless ``MLFLOW_TRACKING_URI`` is set), or ``none``. wandb and mlflow are
    optional packages: a run that asks for one that is not installed is refused up front."""
    logger_project: str = "detcon"
    """Weights & Biases project / MLflow experiment name (the run is named after ``out``)."""
    auto_settings: str = ""
    """Set by ``detcon pretrain --data DIR`` without ``--config``: the settings it chose from
    the device and the folder, and why. Informational (recorded in config.yaml); not read."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A bad key or value in a config file or override."""


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _all_keys(cfg) -> list[str]:
    return [
        f"{g.name}.{f.name}"
        for g in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, g.name))
    ]


def _field_type(obj, name: str):
    return typing.get_type_hints(type(obj))[name]


def parse_value(text: str, typ, key: str = "?"):
    """Parse a command-line string into ``typ`` (int, float, bool, str, or ``X | None``)."""
    origin = typing.get_origin(typ)
    if origin is Literal:  # a closed choice of strings, checked by _check_choice
        return str(text)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        typ = args[0]
    try:
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typ is int:
            return int(float(text)) if "e" in text.lower() else int(text)
        if typ is float:
            return float(text)
        return str(text)
    except ValueError:
        raise ConfigError(f"{key}: cannot parse {text!r} as {typ.__name__}") from None


def _coerce(value, typ, key: str):
    """Check / convert a YAML value to the field type (ints are accepted for floats)."""
    if typing.get_origin(typ) is Literal:
        typ = str
    if isinstance(value, str) and typ is not str:
        return parse_value(value, typ, key)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, bool, str) and not isinstance(value, typ):
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    return value


#: Fields restricted to a fixed set of string values (checked on load and in resolve).
CHOICES = {
    f"{group.name}.{f}": typing.get_args(hint)
    for group in dataclasses.fields(Config)
    for f, hint in typing.get_type_hints(group.default_factory).items()
    if typing.get_origin(hint) is Literal
}

#: Methods that always train on the whole-image mask with one id per view.
WHOLE_IMAGE_METHODS = ("byol", "simclr")


def _check_choice(key: str, value) -> None:
    allowed = CHOICES.get(key)
    if allowed is not None and value not in allowed:
        raise ConfigError(
            f"{key}: {value!r} is not one of {allowed}.{_suggest(str(value), allowed)}"
        )


#: Numeric fields and their valid ranges (checked on load, after the overrides, and in
#: resolve): ``">= a"``, ``"> a"``, ``"[a, b]"``, ``"[a, b)"`` or ``"(a, b]"``.
RANGES = {
    "data.batch_size": ">= 1",
    "data.image_size": ">= 32",
    "data.num_workers": ">= 0",
    "data.repeat": ">= 1",
    "train.threads": ">= 0",
    "data.fraction": "(0, 1]",
    "masks.num_masks": ">= 1",
    "loss.temperature": "> 0",
    "optim.base_lr": "> 0",
    "optim.weight_decay": ">= 0",
    "optim.momentum": "[0, 1)",
    "optim.eta": "> 0",
    "optim.ema_base": "[0, 1]",
    "train.steps": ">= 0",
    "train.grad_accum": ">= 1",
    "train.ckpt_every": ">= 1",
    "train.keep_every": ">= 0",
    "train.log_every": ">= 1",
    "train.stop_after": ">= 0",
}

#: ``train.device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _in_range(value, spec: str) -> bool:
    """Whether ``value`` satisfies a :data:`RANGES` spec (NaN never does)."""
    if spec.startswith(">="):
        return value >= float(spec[2:])
    if spec.startswith(">"):
        return value > float(spec[1:])
    lo, hi = (float(x) for x in spec[1:-1].split(","))
    above = lo < value if spec.startswith("(") else lo <= value
    return above and (value <= hi if spec.endswith("]") else value < hi)


def _check_range(key: str, value) -> None:
    spec = RANGES.get(key)
    if spec is not None and not (math.isfinite(value) and _in_range(value, spec)):
        rule = f"in {spec}" if spec[0] in "[(" else spec
        raise ConfigError(f"{key} must be {rule}, got {value}")


def validate(cfg: Config, check_device: bool = True) -> Config:
    """Check every :data:`CHOICES` and :data:`RANGES` field and ``train.device``; raises
    :class:`ConfigError` naming the key. ``check_device`` also requires CUDA to be present
    when ``train.device`` asks for it. Returns ``cfg``."""
    for key in (*CHOICES, *RANGES):
        group, name = key.split(".")
        value = getattr(getattr(cfg, group), name)
        _check_choice(key, value)
        _check_range(key, value)
    if cfg.train.steps == 0 and cfg.train.epochs < 1:
        raise ConfigError(
            f"train.epochs must be >= 1 when train.steps is 0 (derived from epochs), got {cfg.train.epochs}"
        )
    for name in cfg.train.loggers.split(","):
        if name.strip() not in LOGGERS:
            raise ConfigError(
                f"train.loggers: {name.strip()!r} is not one of {LOGGERS} (comma-separated)."
                f"{_suggest(name.strip(), LOGGERS)}"
            )
    _check_mask_source(cfg)
    if not _DEVICE.fullmatch(cfg.train.device):
        raise ConfigError(
            f"train.device: {cfg.train.device!r} is not one of auto, cpu, cuda, cuda:N"
        )
    if check_device and cfg.train.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={cfg.train.device} but CUDA is not available; use train.device=cpu or auto"
            )
        index = int(cfg.train.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device={cfg.train.device} but only {torch.cuda.device_count()} CUDA devices "
                "are visible"
            )
    return cfg


def _check_mask_source(cfg: Config) -> None:
    """``masks.source`` must name a cache folder or a generator (with valid parameters):
    parsed here, at load, not after the dataset is scanned. ``coco`` needs ``data.coco_json``."""
    from detcon.masks.source import GroundTruth, parse_mask_source

    source = parse_mask_source(cfg.masks.source)
    if isinstance(source, GroundTruth) and not cfg.data.coco_json:
        raise ConfigError("masks.source=coco (ground truth) needs data.coco_json")


def apply_dict(cfg: Config, data: dict, source: str = "config") -> Config:
    """Set fields from a nested dict ``{group: {field: value}}``; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of groups, got {type(data).__name__}")
    groups = {f.name for f in dataclasses.fields(cfg)}
    from_file = source != "override"
    for gname, values in data.items():
        if gname == "plan" and from_file:  # a saved run's plan: derived, recomputed
            continue
        if gname not in groups:
            raise ConfigError(f"{source}: unknown config group {gname!r}.{_suggest(gname, groups)}")
        group = getattr(cfg, gname)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: group {gname!r} must be a mapping")
        names = {f.name for f in dataclasses.fields(group)}
        for name, value in values.items():
            key = f"{gname}.{name}"
            if key in DERIVED_KEYS:
                if from_file:  # written by an older version: recomputed by resolve()
                    continue
                raise ConfigError(f"{key} is derived, not set: it follows from {DERIVED_KEYS[key]}")
            if name not in names:
                raise ConfigError(
                    f"{source}: unknown config key {key!r}.{_suggest(key, _all_keys(cfg))}"
                )
            value = _coerce(value, _field_type(group, name), key)
            _check_choice(key, value)
            setattr(group, name, value)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``group.field=value`` strings, parsed with the dataclass field types."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like group.field=value")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) != 2:
            raise ConfigError(f"unknown config key {key!r}.{_suggest(key, _all_keys(cfg))}")
        if key in DERIVED_KEYS:
            raise ConfigError(f"{key} is derived, not set: it follows from {DERIVED_KEYS[key]}")
        apply_dict(
            cfg,
            {parts[0]: {parts[1]: parse_value(text.strip(), _type_of(cfg, parts), key)}},
            "override",
        )
    return cfg


def _type_of(cfg: Config, parts: list[str]):
    group = getattr(cfg, parts[0], None)
    if (
        group is None
        or not dataclasses.is_dataclass(group)
        or parts[1] not in {f.name for f in dataclasses.fields(group)}
    ):
        key = ".".join(parts)
        raise ConfigError(f"unknown config key {key!r}.{_suggest(key, _all_keys(cfg))}")
    return _field_type(group, parts[1])


def recipe_names() -> list[str]:
    """Names of the shipped recipes (``detcon/configs/*.yaml`` without the suffix)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name_or_path: str) -> Path:
    """A YAML path, or the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"config {name_or_path!r} is neither a file nor a shipped recipe."
        f"{_suggest(path.stem, recipe_names())} Shipped: {', '.join(recipe_names())}"
    )


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (or shipped recipe name), then the overrides."""
    cfg = Config()
    if path:
        file = find_config(path)
        data = _read_yaml(file)
        apply_dict(cfg, data, str(file))
    overrides = overrides or []
    explicit = {item.split("=", 1)[0].strip() for item in overrides}
    return validate(apply_method(apply_overrides(cfg, overrides), explicit))


def _read_yaml(file: Path):
    """``yaml.safe_load`` of a file; a syntax error, an unhashable key or a non-safe tag
    (``!!python/...``) is a one-line :class:`ConfigError` naming the file and the line."""
    try:
        with open(file, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        what = f"{context}: {problem}" if context else problem
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(what).split())}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not a UTF-8 text file ({err.reason})") from None


def apply_method(cfg: Config, explicit: set[str] | frozenset[str] = frozenset()) -> Config:
    """Settings a method fixes, applied as soon as the config is loaded (so the dataset is
    built with them): ``byol`` and ``simclr`` train on the whole-image mask with K = 1. A
    recipe's or the defaults' masks are replaced (and said so); a value given explicitly
    (``explicit``: the override keys) that conflicts is a :class:`ConfigError`."""
    if cfg.loss.method not in WHOLE_IMAGE_METHODS:
        return cfg
    fixed = {"masks.source": "whole", "masks.num_masks": 1}
    for key, value in fixed.items():
        current = getattr(cfg.masks, key.split(".")[1])
        if key in explicit and current != value:
            raise ConfigError(
                f"loss.method={cfg.loss.method} trains on the whole-image mask with "
                f"masks.source=whole masks.num_masks=1, but {key}={current!r} was given; "
                "drop it, or use detcon_b / detcon_s for region masks"
            )
    if (cfg.masks.source, cfg.masks.num_masks) != ("whole", 1):
        logging.getLogger("detcon.config").info(
            "loss.method=%s uses the whole-image mask: masks.source %r -> 'whole', "
            "masks.num_masks %d -> 1",
            cfg.loss.method,
            cfg.masks.source,
            cfg.masks.num_masks,
        )
        cfg.masks.source, cfg.masks.num_masks = "whole", 1
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (ints, floats, bools, strs) for YAML and checkpoints."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    return apply_dict(Config(), data, "checkpoint config")


def save_yaml(cfg: Config, path: str | os.PathLike, plan: RunPlan | None = None) -> Path:
    """Write the config (and the run's ``plan`` section, when given) as YAML atomically. The
    file loads back as a recipe: the ``plan`` section is skipped (it is recomputed)."""
    path = Path(path)
    data = to_dict(cfg) | ({"plan": plan.to_dict()} if plan is not None else {})
    with atomic_write(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


@dataclass(frozen=True)
class RunPlan:
    """What a config means for one run on one dataset and one process count: the derived
    values, computed in exactly one place (:func:`resolve`), frozen, saved with the run
    (``config.yaml``'s ``plan`` section and every checkpoint). Never set by users: they set
    the fields these derive from."""

    dataset_size: int
    """Images in the dataset (before ``data.repeat``)."""
    world_size: int
    """Processes of the run."""
    local_batch: int
    """Images per process per micro-batch: ``batch_size / (world_size * grad_accum)``."""
    steps_per_epoch: int
    """Optimizer steps per epoch: ``dataset_size * repeat // batch_size`` (drop_last)."""
    total_steps: int
    """Optimizer steps of the run: ``train.steps``, else ``epochs * steps_per_epoch``."""
    warmup_steps: int
    """Linear warmup steps of the cosine schedule."""
    peak_lr: float
    """Learning rate after warmup: ``base_lr * batch_size / 256``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The derived values that older detcon versions kept among the config fields: dropped from
#: saved files (they are recomputed), an error when set by an override.
DERIVED_KEYS = {
    "train.total_steps": "train.steps or train.epochs",
    "train.steps_per_epoch": "data.batch_size and data.repeat",
    "train.local_batch": "data.batch_size and train.grad_accum",
    "optim.warmup_steps": "optim.warmup_epochs",
    "optim.peak_lr": "optim.base_lr (peak = base_lr * batch_size / 256)",
}


def resolve(cfg: Config, dataset_size: int, world_size: int = 1) -> RunPlan:
    """Validate ``cfg`` against the dataset and the process count and return the run's
    :class:`RunPlan` (``cfg`` is not modified).

    * ``local_batch = batch_size / (world_size * grad_accum)`` (must divide exactly);
    * ``steps_per_epoch = dataset_size * repeat // batch_size`` (drop_last, official);
    * ``total_steps = steps`` if set, else ``epochs * dataset_size * repeat // batch_size``
      (official ``num_epochs * 1281167 // 4096``);
    * ``warmup_steps = warmup_epochs * dataset_size * repeat // batch_size``; when
      ``warmup_epochs`` is -1, ``epochs // 100`` epochs (official), or ``total_steps // 100``
      when the run is given as ``train.steps`` (the same 1% of the run); capped below
      total_steps;
    * ``peak_lr = base_lr * batch_size / 256``;
    * every field is checked as by :func:`validate` (choices, ranges; not CUDA's presence).
    """
    data, train, optim = cfg.data, cfg.train, cfg.optim
    validate(cfg, check_device=False)  # the device is picked (and checked) by the trainer
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(f"model.output_stride must be 8, 16 or 32, got {cfg.model.output_stride}")
    if data.image_size % 32:
        raise ConfigError(
            f"data.image_size must be a multiple of 32 (backbone stride), got {data.image_size}"
        )
    per = world_size * train.grad_accum
    if data.batch_size % per:
        raise ConfigError(
            f"data.batch_size={data.batch_size} is not divisible by world_size*grad_accum={per}"
        )
    n = dataset_size * max(1, data.repeat)
    if n < data.batch_size:
        raise ConfigError(
            f"the dataset has {n} images (x repeat) but data.batch_size is {data.batch_size}; "
            "lower the batch size or raise data.repeat"
        )
    total = train.steps if train.steps > 0 else train.epochs * n // data.batch_size
    if total < 1:
        raise ConfigError("the run has 0 steps: set train.steps or train.epochs")
    if optim.warmup_epochs >= 0:
        warmup = optim.warmup_epochs * n // data.batch_size
    elif train.steps > 0:  # a step budget: the official 1% of the run (epochs // 100 of epochs)
        warmup = total // 100
    else:  # official: warmup_epochs = epochs // 100
        warmup = (train.epochs // 100) * n // data.batch_size
    return RunPlan(
        dataset_size=dataset_size,
        world_size=world_size,
        local_batch=data.batch_size // per,
        steps_per_epoch=n // data.batch_size,
        total_steps=total,
        warmup_steps=min(warmup, max(total - 1, 0)),
        peak_lr=optim.base_lr * data.batch_size / 256,
    )
