"""Checkpoints: explicit, versioned dicts written atomically and read without unpickling.

Layout of a pretraining checkpoint (``FORMAT_VERSION`` 1)::

    {
      "format_version": 1,
      "kind": "detcon-pretrain",
      "step": int,                    # optimizer steps completed
      "config": dict,                 # resolved config (plain types only)
      "model": {"backbone": str, "width_multiplier": int},  # enough to rebuild the backbone
      "online": state_dict,           # DetConNet state dict; backbone keys start with "backbone."
      "target": state_dict | None,    # EMA target (DetCon_B / BYOL), None for DetCon_S / SimCLR
      "optimizer": state_dict, "scaler": state_dict | None,
      "rng": {...}, "extra": {...},   # RNG states, data-loader position, probe head, ...
    }

Everything in it is tensors and plain Python containers, so :func:`load` uses
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from detcon.fileio import atomic_write

FORMAT_VERSION = 1
BACKBONE_PREFIX = "backbone."


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` and check its format version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a detcon checkpoint (got {type(ckpt).__name__})")
    version = ckpt.get("format_version")
    if version is not None and version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}; this detcon reads up to {FORMAT_VERSION}. "
            "Upgrade detcon."
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
