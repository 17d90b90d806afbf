"""Shared pieces of every evaluation: building the backbone to evaluate, results on disk.

A backbone comes from exactly one of:

- a detcon pretraining checkpoint (``checkpoint``, ``which`` online or target), read with
  :func:`detcon.checkpoint.backbone_from_checkpoint`;
- ``backbone_weights="torchvision"``: torchvision's supervised ImageNet weights for ``arch``,
  read from the torch hub cache only (this library never downloads);
- ``backbone_weights="random"``: a freshly initialised backbone (seeded by ``seed``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from detcon import checkpoint as ckpt_io
from detcon.evaluation.config import EvalConfig
from detcon.fileio import atomic_write
from detcon.model.backbone import build_backbone, load_torchvision_weights


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
    checkpoint: str | os.PathLike | None = None,
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
        # evaluated with the padding it was trained with (checkpoints before the key: torch)
        backbone, info = ckpt_io.backbone_from_checkpoint(checkpoint, which)
        return backbone, {"kind": "checkpoint", **info}
    if backbone_weights == "random":
        torch.manual_seed(seed)
        return build_backbone(arch), {"kind": "random", "arch": arch, "seed": seed}
    if backbone_weights == "torchvision":
        path = _torchvision_weight_file(arch)
        state = torch.load(path, map_location="cpu", weights_only=True)
        backbone = load_torchvision_weights(build_backbone(arch), state)
        return backbone, {"kind": "torchvision", "arch": arch, "path": str(path)}
    raise ValueError(
        f"--backbone-weights must be 'torchvision' or 'random', got {backbone_weights!r}"
    )


def backbone_from_config(cfg: EvalConfig) -> tuple[nn.Module, dict]:
    """:func:`load_backbone` with the source fields of an evaluation config."""
    return load_backbone(cfg.checkpoint, cfg.backbone_weights, cfg.arch, cfg.which, cfg.seed)


def check_config(cfg: object, cls: type[EvalConfig]) -> None:
    """Refuse anything but a ``cls`` (an ``argparse.Namespace``, a dict, another protocol's
    config) with a ``TypeError`` that says how to build one."""
    if not isinstance(cfg, cls):
        raise TypeError(
            f"expected a {cls.__name__} (e.g. {cls.__name__}(checkpoint=..., data=...)), "
            f"got {type(cfg).__name__}"
        )


def default_result_path(cfg: EvalConfig, protocol: str) -> Path:
    """``out`` if given, else ``<checkpoint stem>.eval_<protocol>.json`` next to the
    checkpoint, else ``eval_<protocol>_<weights>_<arch>.json`` in the working directory."""
    if cfg.out:
        return Path(cfg.out)
    if cfg.checkpoint:
        ck = Path(cfg.checkpoint)
        return ck.with_name(f"{ck.stem}.eval_{protocol}.json")
    return Path(f"eval_{protocol}_{cfg.backbone_weights}_{cfg.arch}.json")


def save_outputs(result: dict, cfg: EvalConfig, protocol: str) -> list[Path]:
    """Write ``result`` to :func:`default_result_path` and, for a segmentation result, its
    figures next to it (:func:`detcon.evaluation.figures.save_segmentation_figures`). Returns
    the paths written, the JSON first."""
    path = write_result(result, default_result_path(cfg, protocol))
    written = [path]
    if protocol == "segment":
        from detcon.evaluation.figures import save_segmentation_figures

        written += save_segmentation_figures(result, path)
    return written


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
