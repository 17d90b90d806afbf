"""Start from existing weights: ``model.init_from=PATH`` (continued pretraining, not resume).

Accepted files: a detcon checkpoint (pretraining or ``detcon import``), an official DetCon /
BYOL file (read as ``detcon import`` does), a torchvision or timm ResNet state dict (``.pth``,
``fc.*`` dropped) or a ``.safetensors`` file of such a state dict. Everything is read without
unpickling code (``torch.load(weights_only=True)``, safetensors, the restricted unpickler).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("detcon.init_from")

_CHECKPOINT_KINDS = ("detcon-pretrain", "detcon-import")


def read_init_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state dict in DetConNet names, info)``: backbone keys ``backbone.*``, heads
    ``projector.*`` / ``predictor.*`` when the file has them; ``info`` says what was read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: no such file: {path}")
    if path.suffix in (".npy", ".pkl"):
        from detcon.official import to_checkpoint

        ckpt = to_checkpoint(path)
        return dict(ckpt["online"]), {"kind": "official", **ckpt["model"]}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"model.init_from: cannot read {path}: {err}") from err
    if isinstance(raw, dict) and raw.get("kind") in _CHECKPOINT_KINDS:
        from detcon import checkpoint

        ckpt = checkpoint.load(path)  # the checks a checkpoint gets everywhere
        return dict(ckpt["online"]), {"kind": ckpt["kind"], **(ckpt.get("model") or {})}
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"model.init_from: {path} is not a state dict or a detcon checkpoint")
    state = {
        f"backbone.{k.removeprefix('module.')}": v
        for k, v in raw.items()
        if not k.removeprefix("module.").startswith("fc.")
    }
    return state, {"kind": "state_dict"}


def init_from_(net: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load ``path`` into a :class:`~detcon.model.DetConNet` in place, before step 0.

    The backbone must match exactly when ``strict`` (every key present, none left over, equal
    shapes); otherwise missing and unexpected keys are logged and the rest is loaded. Heads are
    loaded when the file has them with the same shapes, kept as initialised otherwise (said in
    the log). Returns ``{"kind", "loaded", "missing", "unexpected", "heads"}``."""
    state, info = read_init_state(path)
    own = net.state_dict()
    backbone = {k for k in own if k.startswith("backbone.")}
    given = {k for k in state if k.startswith("backbone.")}
    missing, unexpected = sorted(backbone - given), sorted(given - backbone)
    bad = sorted(k for k in backbone & given if tuple(state[k].shape) != tuple(own[k].shape))
    if (missing or unexpected or bad) and strict:
        raise ValueError(
            f"model.init_from: {path} does not fit the backbone ({len(missing)} missing "
            f"{missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]}, {len(bad)} of "
            f"another shape {bad[:6]}); check model.backbone / width_multiplier, or set "
            "model.init_strict=false"
        )
    heads = []
    load = {k: state[k] for k in backbone & given if k not in bad}
    for head in ("projector", "predictor"):
        keys = {k for k in own if k.startswith(f"{head}.")}
        if keys and keys <= set(state) and all(state[k].shape == own[k].shape for k in keys):
            load.update({k: state[k] for k in keys})
            heads.append(head)
    net.load_state_dict({**own, **load}, strict=True)
    report = {
        "kind": info["kind"],
        "loaded": len(load),
        "missing": missing,
        "unexpected": unexpected,
        "heads": heads,
    }
    log.info(
        "initialised from %s (%s): %d tensors, heads %s%s",
        path,
        info["kind"],
        len(load),
        ", ".join(heads) or "none (kept their random init)",
        f"; missing {missing[:6]} unexpected {unexpected[:6]}" if missing or unexpected else "",
    )
    return report
