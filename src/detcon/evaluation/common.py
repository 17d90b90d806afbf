"""Shared pieces of every evaluation: building the backbone to evaluate, devices, results JSON.

A backbone comes from exactly one of:

- ``--checkpoint CKPT``: a detcon pretraining checkpoint (layout in :mod:`detcon.checkpoint`);
  ``--which online|target`` picks the network;
- ``--backbone-weights torchvision``: torchvision's supervised ImageNet weights for ``--arch``,
  read from the torch hub cache only (this library never downloads);
- ``--backbone-weights random``: a freshly initialised backbone (seeded by ``--seed``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from detcon import checkpoint as ckpt_io
from detcon.fileio import atomic_write


def build_backbone(name: str, width_multiplier: int = 1, padding: str = "torch") -> nn.Module:
    """The project's ``Backbone`` (torchvision ResNet child names, no avgpool/fc)."""
    from detcon.model.backbone import build_backbone as _build

    return _build(name, width_multiplier=width_multiplier, padding=padding)


def _torchvision_weight_file(arch: str) -> Path:
    """Path of a cached torchvision ImageNet weight file for ``arch``; clear error if absent."""
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(arch)
    except Exception as err:
        raise ValueError(f"torchvision has no pretrained weights for {arch!r}") from err
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    names = [Path(w.url).name for w in weights_enum]
    for name in names:
        if (cache / name).is_file():
            return cache / name
    raise FileNotFoundError(
        f"no torchvision weights for {arch} in {cache} (looked for {', '.join(names)}). detcon "
        "never downloads; place the file there yourself to use --backbone-weights torchvision."
    )


def load_backbone(
    checkpoint: str | None = None,
    backbone_weights: str | None = None,
    arch: str = "resnet50",
    which: str = "online",
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """Build the backbone to evaluate. Returns ``(backbone, source)`` where ``source`` is a
    JSON-able description (``{"kind": "checkpoint", "path": ..., "arch": ..., ...}``).

    Weights are loaded strictly: a checkpoint's backbone keys must match exactly; torchvision
    weights must match exactly apart from ``fc.*``, which the backbone does not have.
    """
    if (checkpoint is None) == (backbone_weights is None):
        raise ValueError("give exactly one of --checkpoint or --backbone-weights")
    if checkpoint is not None:
        ckpt = ckpt_io.load(checkpoint)
        model_info = ckpt.get("model") or {}
        if "backbone" not in model_info:
            raise KeyError(f"{checkpoint}: checkpoint['model']['backbone'] missing")
        width = int(model_info.get("width_multiplier", 1))
        # evaluate with the padding it was trained with (checkpoints before the key: torch)
        padding = str(model_info.get("padding", "torch"))
        backbone = build_backbone(model_info["backbone"], width, padding)
        backbone.load_state_dict(ckpt_io.backbone_state_dict(ckpt, which), strict=True)
        source = {
            "kind": "checkpoint",
            "path": str(Path(checkpoint).resolve()),
            "which": which,
            "arch": model_info["backbone"],
            "width_multiplier": width,
            "padding": padding,
            "step": ckpt.get("step"),
        }
        return backbone, source
    if backbone_weights == "random":
        torch.manual_seed(seed)
        return build_backbone(arch), {"kind": "random", "arch": arch, "seed": seed}
    if backbone_weights == "torchvision":
        path = _torchvision_weight_file(arch)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        backbone = build_backbone(arch)
        backbone.load_state_dict(state, strict=True)
        return backbone, {"kind": "torchvision", "arch": arch, "path": str(path)}
    raise ValueError(
        f"--backbone-weights must be 'torchvision' or 'random', got {backbone_weights!r}"
    )


def backbone_from_args(args) -> tuple[nn.Module, dict]:
    """:func:`load_backbone` from the common command-line arguments."""
    return load_backbone(args.checkpoint, args.backbone_weights, args.arch, args.which, args.seed)


def resolve_device(name: str | None) -> torch.device:
    """``"auto"``/None -> cuda if available else cpu; otherwise ``torch.device(name)``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_result_path(args, protocol: str) -> Path:
    """``--out`` if given, else ``<checkpoint stem>.eval_<protocol>.json`` next to the
    checkpoint, else ``eval_<protocol>_<weights>_<arch>.json`` in the working directory."""
    if getattr(args, "out", None):
        return Path(args.out)
    if getattr(args, "checkpoint", None):
        ck = Path(args.checkpoint)
        return ck.with_name(f"{ck.stem}.eval_{protocol}.json")
    return Path(f"eval_{protocol}_{args.backbone_weights}_{args.arch}.json")


def write_result(result: dict, path: str | os.PathLike) -> Path:
    """Write ``result`` as indented JSON atomically (temp file + ``os.replace``)."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    return path


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def snapshot_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer (for bit-identity checks)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Raise if any parameter or buffer of ``module`` differs bit-wise from ``before``."""
    after = module.state_dict()
    if set(after) != set(before):
        raise AssertionError("frozen backbone gained or lost state entries")
    changed = [k for k, v in after.items() if not torch.equal(v.detach().cpu(), before[k])]
    if changed:
        raise AssertionError(f"frozen backbone changed during evaluation: {changed[:5]}")
