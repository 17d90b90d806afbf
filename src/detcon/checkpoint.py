"""Checkpoints: explicit, versioned dicts written atomically and read without unpickling.

Layout of a pretraining checkpoint (``FORMAT_VERSION`` 2)::

    {
      "format_version": 2,
      "kind": "detcon-pretrain",
      "step": int,                    # optimizer steps completed
      "config": dict,                 # the config (plain types only)
      "plan": dict,                   # its RunPlan: total / warmup steps, peak lr, batches
      "model": {"backbone": str, "width_multiplier": int,   # enough to rebuild the backbone
                "output_stride": int, "padding": str},
      "online": state_dict,           # DetConNet state dict; backbone keys start with "backbone."
      "target": state_dict | None,    # EMA target (DetCon_B / BYOL), None for DetCon_S / SimCLR
      "optimizer": state_dict, "scaler": state_dict | None,
      "rng": {...}, "extra": {...},   # RNG states, data-loader position, probe head, ...
      "checksum": "sha256:...",       # of everything else (added by save_atomic), since version 2
    }

:func:`load` verifies the checksum (version 1 files have none and are accepted as they are) and
refuses non-finite weights in ``online`` / ``target`` with :class:`CheckpointCorruptError`.

Everything in it is tensors and plain Python containers, so :func:`load` uses
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from detcon.config import Config, RunPlan, to_dict
from detcon.fileio import atomic_write

FORMAT_VERSION = 2  # 2: "checksum" key
BACKBONE_PREFIX = "backbone."
CHECKSUM_KEY = "checksum"


class CheckpointCorruptError(ValueError):
    """A checkpoint that cannot be read, whose checksum does not match its contents, or whose
    weights are not finite. The message names the file."""


def checksum(ckpt: dict) -> str:
    """``"sha256:HEX"`` over every tensor's dtype, shape and raw bytes and the plain values and
    container structure around them, in a deterministic traversal (dict keys sorted by
    ``repr``); the top-level ``"checksum"`` key itself is left out."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != CHECKSUM_KEY})
    return "sha256:" + h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=repr):
            h.update(f"K{key!r};".encode())
            _feed(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    else:  # None, bool, int, float, str, bytes, torch.dtype, ...: repr is exact for all of them
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a partial file. A
    checkpoint dict (one with ``"format_version"``) is saved with a fresh ``"checksum"`` of its
    contents (the caller's dict is not modified).
    """
    path = Path(path)
    if isinstance(obj, dict) and "format_version" in obj:
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: checksum(obj)}
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``, check its format version, its checksum
    (format version 2 on) and that the ``online`` / ``target`` weights are finite.

    Raises :class:`FileNotFoundError` when ``path`` is not a file and
    :class:`CheckpointCorruptError` when it cannot be read or fails a check.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointCorruptError(f"could not read checkpoint {path}: {first}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a detcon checkpoint (got {type(ckpt).__name__})")
    version = ckpt.get("format_version")
    if version is not None and version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}; this detcon reads up to {FORMAT_VERSION}. "
            "Upgrade detcon."
        )
    stored = ckpt.get(CHECKSUM_KEY)
    if stored is None and version is not None and version >= 2:
        raise CheckpointCorruptError(f"checkpoint {path} is damaged: its checksum is missing")
    if stored is not None and checksum(ckpt) != stored:
        raise CheckpointCorruptError(
            f"checkpoint {path} is damaged: its contents do not match the checksum saved with it"
        )
    for which in ("online", "target"):
        state = ckpt.get(which)
        for key, value in (state or {}).items() if isinstance(state, dict) else ():
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                raise CheckpointCorruptError(
                    f"checkpoint {path} has non-finite values in {which}[{key!r}]"
                )
    return ckpt


def backbone_state_dict(ckpt: dict, which: str = "online") -> dict[str, torch.Tensor]:
    """The backbone weights of a pretraining checkpoint, with the ``backbone.`` prefix removed.

    ``which`` is ``"online"`` (default) or ``"target"``. Keys are torchvision ResNet names
    (``conv1.weight``, ``layer1.0.bn3.running_mean``, ...) without ``fc``.
    """
    if which not in ("online", "target"):
        raise ValueError(f"which must be 'online' or 'target', got {which!r}")
    state = ckpt.get(which)
    if state is None:
        raise KeyError(f"checkpoint has no {which!r} network (DetCon_S / SimCLR have no target)")
    out = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    if not out:
        raise KeyError(f"no keys starting with {BACKBONE_PREFIX!r} in checkpoint[{which!r}]")
    return out


def rng_state() -> dict:
    """Global RNG states (torch CPU, CUDA, numpy, python). The mask-sampling generator needs no
    state: it is re-seeded from (seed, step, rank) every step."""
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict:
    """numpy's legacy RNG state as tensors and plain numbers (loadable with weights_only)."""
    # numpy's stubs pick the dict overload for the default legacy=True, which returns this tuple
    state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(
    cfg: Config, plan: RunPlan, step, online, target, optimizer, scaler, loss: float | None = None
) -> dict:
    """The pretraining checkpoint dict (layout in :mod:`detcon.checkpoint`); ``loss`` is the
    last logged loss (``extra.loss``), reported when a finished run is resumed."""
    probe = online.probe.state_dict() if online.probe is not None else None
    return {
        "format_version": FORMAT_VERSION,
        "kind": "detcon-pretrain",
        "step": step,
        "config": to_dict(cfg),
        "plan": plan.to_dict(),
        "model": {
            "backbone": cfg.model.backbone,
            "width_multiplier": cfg.model.width_multiplier,
            "output_stride": cfg.model.output_stride,
            "padding": cfg.model.padding,
        },
        "online": online.net.state_dict(),
        "target": target.state_dict() if target is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng_state(),
        "extra": {
            "epoch": step // plan.steps_per_epoch,
            "batch_in_epoch": step % plan.steps_per_epoch,
            "probe": probe,
            "loss": None if loss is None or not math.isfinite(loss) else float(loss),
        },
    }


def restore(ckpt: dict, online, target, optimizer, scaler) -> int:
    """Load a checkpoint into the (unwrapped) modules; returns the step to continue from."""
    if ckpt.get("kind") != "detcon-pretrain":
        raise ValueError(f"not a pretraining checkpoint (kind={ckpt.get('kind')!r})")
    online.net.load_state_dict(ckpt["online"])
    if target is not None:
        if ckpt["target"] is None:
            raise ValueError("checkpoint has no target network but this method needs one")
        target.load_state_dict(ckpt["target"])
    probe = ckpt.get("extra", {}).get("probe")
    if online.probe is not None and probe is not None:
        online.probe.load_state_dict(probe)
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def backbone_from_checkpoint(
    path: str | os.PathLike, which: str = "online", *, padding: str | None = None
) -> tuple[torch.nn.Module, dict]:
    """Rebuild and strictly load the ``which`` backbone of the pretraining checkpoint at
    ``path`` (read and verified by :func:`load`).

    The architecture and width come from ``ckpt["model"]``; ``padding`` defaults to the one
    recorded there (``"torch"`` for checkpoints older than the key); pass ``"torch"`` or
    ``"same"`` to override it (padding changes the forward pass, not the weights). Weights
    are loaded with :func:`detcon.model.backbone.load_torchvision_weights`, so a missing or
    unexpected key is a ``ValueError`` naming them. Returns ``(backbone, info)`` with ``info``
    ``{"path", "which", "arch", "width_multiplier", "padding", "step"}`` (JSON-able).
    """
    from detcon.model.backbone import build_backbone, load_torchvision_weights

    ckpt = load(path)
    model_info = ckpt.get("model") or {}
    if "backbone" not in model_info:
        raise KeyError(f"{path}: checkpoint['model']['backbone'] missing")
    arch = model_info["backbone"]
    width = int(model_info.get("width_multiplier", 1))
    padding = str(model_info.get("padding", "torch")) if padding is None else padding
    backbone = build_backbone(arch, width_multiplier=width, padding=padding)
    try:
        load_torchvision_weights(backbone, backbone_state_dict(ckpt, which))
    except ValueError as err:
        raise ValueError(f"{path}: the {which} backbone weights do not fit {arch}: {err}") from err
    info = {
        "path": str(Path(path).resolve()),
        "which": which,
        "arch": arch,
        "width_multiplier": width,
        "padding": padding,
        "step": ckpt.get("step"),
    }
    return backbone, info
