"""Export a pretrained backbone to other frameworks' weight files, verified before writing.

Formats (all from the backbone's torchvision-named state dict, see :mod:`detcon.checkpoint`):

- ``torchvision``: ``torch.save`` of the ResNet state dict without ``fc``. Loading it with
  ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` reports missing keys exactly
  ``{"fc.weight", "fc.bias"}`` and no unexpected keys (verified here on every export).
- ``timm``: the same file. timm's ``ResNet`` uses torchvision's parameter names
  (``conv1, bn1, layer1.0.conv1, ..., downsample.0/1``, ``fc``), so
  ``timm.create_model("resnet50", num_classes=0)`` loads it strictly; verified with timm when it
  is installed, else with torchvision.
- ``detectron2``: a pickle ``{"model": {name: numpy array}, "__author__": "detcon",
  "matching_heuristics": True}`` in detectron2's ResNet names (``stem.conv1.weight``,
  ``stem.conv1.norm.*``, ``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``,
  ``res2.0.shortcut.weight``, ``res2.0.shortcut.norm.*``). BN ``num_batches_tracked`` counters
  are dropped (detectron2 has no such buffer), so the mapping is a bijection on the remaining
  keys. Use it with ``MODEL.RESNETS.STRIDE_IN_1X1 False`` (torchvision puts the stride on the
  3x3 conv) and ``INPUT.FORMAT RGB`` with ImageNet mean/std in 0-255 units.
- ``safetensors``: the torchvision-named state dict as a ``.safetensors`` file.
- ``mmdet`` / ``mmseg`` (the same file): ``torch.save`` of ``{"state_dict": {"backbone." +
  torchvision name: tensor}, "meta": {...}}``. The ResNet of mmdetection / mmsegmentation
  (``type="ResNet"``, ``style="pytorch"``: stride on the 3x3 conv, as torchvision) uses
  torchvision's parameter names, so ``init_cfg=dict(type="Pretrained", prefix="backbone.",
  checkpoint=FILE)`` on the backbone (or ``load_from=FILE`` for the whole detector) loads it;
  mmengine reads ``state_dict`` and strips the prefix. Config fragments: docs/evaluation.md.

Every export is checked before it is moved into place: the file is written to a temporary
name, read back, mapped back to torchvision names, compared bit-for-bit with the source
weights, loaded into a reference model, and a forward pass is compared with our backbone.
Only then is it renamed onto ``out`` (``os.replace``): there are no partial exports.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detcon import checkpoint as ckpt_io
from detcon.fileio import atomic_path

FORMATS = ("torchvision", "timm", "detectron2", "safetensors", "mmdet", "mmseg")

#: Formats written as an OpenMMLab checkpoint with ``backbone.``-prefixed keys.
OPENMMLAB = ("mmdet", "mmseg")
_PREFIX = "backbone."

# torchvision -> detectron2 names. Each rule maps a prefix pattern; the rest of the key is
# kept. Applied to whole dotted components only (never a substring replace anywhere).
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def to_detectron2_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict (no ``fc``) to detectron2's ResNet names.

    ``num_batches_tracked`` buffers are dropped; any other key that does not match the ResNet
    layout is an error (never silently skipped).
    """
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        out[_tv_to_d2(key)] = value
    if len(set(out)) != len(out):
        raise AssertionError("detectron2 renaming is not injective")
    return out


def _tv_to_d2(key: str) -> str:
    if m := re.fullmatch(r"conv1\.weight", key):
        return "stem.conv1.weight"
    if m := re.fullmatch(r"bn1\.(\w+)", key):
        return f"stem.conv1.norm.{_bn(m[1], key)}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.conv(\d)\.weight", key):
        return f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.bn(\d)\.(\w+)", key):
        return f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{_bn(m[4], key)}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.0\.weight", key):
        return f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.1\.(\w+)", key):
        return f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{_bn(m[3], key)}"
    raise KeyError(f"unexpected key for a ResNet backbone: {key!r}")


def _bn(field: str, key: str) -> str:
    if field not in _BN_FIELDS:
        raise KeyError(f"unexpected BN field in {key!r}")
    return field


def from_detectron2_names(state: dict) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_detectron2_names` (numpy arrays or tensors in, tensors out)."""
    out = {}
    for key, value in state.items():
        out[_d2_to_tv(key)] = torch.as_tensor(np.asarray(value))
    return out


def _d2_to_tv(key: str) -> str:
    if key == "stem.conv1.weight":
        return "conv1.weight"
    if m := re.fullmatch(r"stem\.conv1\.norm\.(\w+)", key):
        return f"bn1.{_bn(m[1], key)}"
    if m := re.fullmatch(r"res(\d)\.(\d+)\.conv(\d)\.weight", key):
        return f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"
    if m := re.fullmatch(r"res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)", key):
        return f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{_bn(m[4], key)}"
    if m := re.fullmatch(r"res(\d)\.(\d+)\.shortcut\.weight", key):
        return f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"
    if m := re.fullmatch(r"res(\d)\.(\d+)\.shortcut\.norm\.(\w+)", key):
        return f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{_bn(m[3], key)}"
    raise KeyError(f"unexpected detectron2 ResNet key: {key!r}")


def to_openmmlab(state: dict[str, torch.Tensor], meta: dict | None = None) -> dict:
    """``{"state_dict": {"backbone." + key: tensor}, "meta": meta}`` (an mmengine checkpoint)."""
    return {"state_dict": {_PREFIX + k: v for k, v in state.items()}, "meta": dict(meta or {})}


def from_openmmlab(obj: dict) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_openmmlab`: every key must carry the ``backbone.`` prefix."""
    state = obj.get("state_dict", obj)
    bad = [k for k in state if not k.startswith(_PREFIX)]
    if bad:
        raise KeyError(f"keys without the {_PREFIX!r} prefix: {bad[:3]}")
    return {k[len(_PREFIX) :]: v for k, v in state.items()}


def _write(fmt: str, state: dict[str, torch.Tensor], path: Path, meta: dict) -> None:
    if fmt in ("torchvision", "timm"):
        torch.save(state, path)
    elif fmt in OPENMMLAB:
        torch.save(to_openmmlab(state, {**meta, "format": fmt, "source": "detcon"}), path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(path),
            metadata={k: str(v) for k, v in meta.items()},
        )
    elif fmt == "detectron2":
        model = {k: v.cpu().numpy() for k, v in to_detectron2_names(state).items()}
        with open(path, "wb") as f:
            pickle.dump({"model": model, "__author__": "detcon", "matching_heuristics": True}, f)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")


def read_export(fmt: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an exported file back into torchvision names (``num_batches_tracked`` absent for
    detectron2)."""
    if fmt in ("torchvision", "timm"):
        return torch.load(path, map_location="cpu", weights_only=True)
    if fmt in OPENMMLAB:
        return from_openmmlab(torch.load(path, map_location="cpu", weights_only=True))
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if fmt == "detectron2":
        with open(path, "rb") as f:
            obj = pickle.load(f)  # our own file, just written; numpy arrays only
        return from_detectron2_names(obj["model"])
    raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")


def _reference_model(arch: str, width: int, fmt: str) -> tuple[nn.Module, str]:
    """A model of another framework to load the export into: timm (when installed, for
    ``timm``), else torchvision; our own Backbone only when torchvision lacks the net."""
    import torchvision

    if fmt == "timm":
        try:
            import timm

            return timm.create_model(arch, pretrained=False, num_classes=0), "timm"
        except ImportError:
            pass
    if width == 1 and arch in torchvision.models.list_models(torchvision.models):
        return torchvision.models.get_model(arch, weights=None), "torchvision"
    from detcon.model.backbone import build_backbone

    return build_backbone(arch, width_multiplier=width), "detcon"


def _trunk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    features = getattr(model, "forward_features", None)
    if features is not None:
        return features(x)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(model, name)(x)
    return x


@torch.no_grad()
def verify_export(
    fmt: str,
    path: Path,
    source: dict[str, torch.Tensor],
    backbone: nn.Module,
    arch: str,
    width: int,
) -> str:
    """Check an exported file; returns the reference framework used. Raises on any mismatch."""
    back = read_export(fmt, path)
    expected = {
        k: v
        for k, v in source.items()
        if not (fmt == "detectron2" and k.endswith("num_batches_tracked"))
    }
    if set(back) != set(expected):
        raise AssertionError(f"exported keys differ: {sorted(set(back) ^ set(expected))[:5]}")
    for k, v in expected.items():
        if back[k].dtype != v.dtype or not torch.equal(back[k], v.cpu()):
            raise AssertionError(f"exported tensor {k} differs from the source")
    ref, framework = _reference_model(arch, width, fmt)
    result = ref.load_state_dict(back, strict=False)
    missing = set(result.missing_keys)
    if fmt == "detectron2":  # counters are not exported; fine for inference
        missing = {k for k in missing if not k.endswith("num_batches_tracked")}
    allowed = {"fc.weight", "fc.bias"} if framework == "torchvision" else set()
    if missing != allowed or result.unexpected_keys:
        raise AssertionError(
            f"loading into {framework}: missing {sorted(missing)}, "
            f"unexpected {result.unexpected_keys}"
        )
    ref.eval()
    backbone.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if not torch.equal(_trunk(ref, x), backbone(x)):
        raise AssertionError(f"{framework} forward pass differs from the detcon backbone")
    return framework


def export_checkpoint(
    ckpt_path: str | os.PathLike, fmt: str, out: str | os.PathLike, which: str = "online"
) -> dict:
    """Export the ``which`` backbone of a pretraining checkpoint to ``out`` in format ``fmt``.

    Returns ``{"format", "path", "framework" (verified against), "num_tensors", "arch"}``.
    """

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    # the one checkpoint -> backbone loader (strict); torchvision's padding, since the export
    # is compared against torchvision's forward
    backbone, info = ckpt_io.backbone_from_checkpoint(ckpt_path, which, padding="torch")
    arch, width = info["arch"], info["width_multiplier"]
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    out = Path(out)
    meta = {"arch": arch, "width_multiplier": width, "which": which, "step": info["step"]}
    with atomic_path(out) as tmp:  # renamed onto ``out`` only if verification passes
        _write(fmt, state, tmp, meta)
        framework = verify_export(fmt, tmp, state, backbone, arch, width)
    return {
        "format": fmt,
        "path": str(out),
        "framework": framework,
        "arch": arch,
        "num_tensors": len(state),
    }
