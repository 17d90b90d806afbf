"""Haiku names -> our PyTorch modules: finding the parameter dicts in a loaded release file,
mapping them strictly onto a torchvision-layout backbone and the heads, and building a detcon
checkpoint (the naming and mapping are described in :mod:`detcon.official`)."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from detcon.official.unpickle import OfficialFormatError, safe_load_official

# --------------------------------------------------------------------------- structure search

_LEAF_TYPES = (np.ndarray, np.generic, int, float)


def _is_leaf(v: Any) -> bool:
    return isinstance(v, _LEAF_TYPES) and not isinstance(v, bool) or torch.is_tensor(v)


def _haiku_dicts(obj: Any, path: tuple[str, ...] = ()):
    """Yield ``(path, {module: {name: leaf}})`` for every haiku-style dict inside ``obj``.

    A haiku dict is a mapping of module names to mappings of leaves (params or state, or both
    merged); a flat ``{"module/name": leaf}`` mapping is accepted too.
    """
    if isinstance(obj, Mapping):
        items = list(obj.items())
        if (
            items
            and all(
                isinstance(k, str)
                and isinstance(v, Mapping)
                and all(_is_leaf(x) and "/" not in str(n) for n, x in v.items())
                for k, v in items
            )
            and any(len(v) for _, v in items)
        ):
            yield path, {k: dict(v) for k, v in items}
            return
        if items and all(isinstance(k, str) and "/" in k and _is_leaf(v) for k, v in items):
            out: dict[str, dict[str, Any]] = defaultdict(dict)
            for k, v in items:
                mod, name = k.rsplit("/", 1)
                out[mod][name] = v
            yield path, dict(out)
            return
        for k, v in items:
            yield from _haiku_dicts(v, (*path, str(k)))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _haiku_dicts(v, (*path, str(i)))


def _select(obj: Any, which: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Merge the haiku dicts of the ``which`` ("online" / "target") network."""
    if which not in ("online", "target"):
        raise ValueError(f"which must be 'online' or 'target', got {which!r}")
    if isinstance(obj, str | os.PathLike):
        obj = safe_load_official(obj)
    found = list(_haiku_dicts(obj))
    if not found:
        raise OfficialFormatError("no haiku parameter dict (module -> {name: array}) found")
    chosen, kinds = [], set()
    for path, d in found:
        low = [p.lower() for p in path]
        if any("opt" in p for p in low):  # optimizer state (momenta have the param names)
            continue
        kind = "target" if any("target" in p for p in low) else None
        kind = kind or ("online" if any("online" in p for p in low) else "neutral")
        kinds.add(kind)
        if kind in (which, "neutral"):
            chosen.append((path, d))
    if which == "target" and "target" not in kinds:
        raise OfficialFormatError(
            f"no target network in this checkpoint (found: {sorted(kinds) or 'nothing'})"
        )
    merged: dict[str, dict[str, Any]] = {}
    sources = []
    for path, d in chosen:
        sources.append("/".join(path) or "<root>")
        for mod, entries in d.items():
            slot = merged.setdefault(mod, {})
            for name, v in entries.items():
                if name in slot:
                    raise OfficialFormatError(
                        f"{mod}/{name} appears twice (in {', '.join(sources)}); "
                        "cannot tell which one to use"
                    )
                slot[name] = v
    return merged, sources


# --------------------------------------------------------------------------- name mapping

# (blocks per group, bottleneck) -> our backbone name
_ARCHS: dict[tuple[tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
    ((3, 24, 36, 3), True): "resnet200",
}
_SPEC_OF = {v: k for k, v in _ARCHS.items()}

_BLOCK_RE = re.compile(r"/~/block_group_(\d+)/~/block_(\d+)/~/(\w+?)(?:/~/.*)?$")


def _torso_prefix(tree: Mapping[str, Any]) -> str:
    prefixes = sorted({m[: -len("/~/initial_conv")] for m in tree if m.endswith("/~/initial_conv")})
    if len(prefixes) != 1:
        raise OfficialFormatError(
            "expected exactly one ResNet torso (a module '<name>/~/initial_conv'), found "
            f"{prefixes or 'none'}"
        )
    return prefixes[0]


def _arr(v: Any) -> np.ndarray:
    if torch.is_tensor(v):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def inspect_official(path_or_dict: Any, which: str = "online") -> dict[str, Any]:
    """Describe the torso found in a checkpoint, without building anything.

    Returns ``{"prefix", "arch", "blocks", "bottleneck", "width_multiplier",
    "layer1_projection", "projections", "sources"}``; ``arch`` is ``None`` when the block
    counts are not one of our backbones.
    """
    tree, sources = _select(path_or_dict, which)
    return _inspect_tree(tree, sources)


def _inspect_tree(tree: Mapping[str, Mapping[str, Any]], sources: list[str]) -> dict[str, Any]:
    prefix = _torso_prefix(tree)
    if f"{prefix}/~/final_batchnorm" in tree or f"{prefix}/~/initial_batchnorm" not in tree:
        raise OfficialFormatError(f"{prefix}: ResNet v2 torsos are not supported (v1 only)")
    blocks: dict[int, set[int]] = defaultdict(set)
    parts: dict[tuple[int, int], set[str]] = defaultdict(set)
    for mod in tree:
        if not mod.startswith(prefix + "/~/"):
            continue
        m = _BLOCK_RE.fullmatch(mod[len(prefix) :])
        if m:
            g, b = int(m.group(1)), int(m.group(2))
            blocks[g].add(b)
            parts[(g, b)].add(m.group(3))
    if sorted(blocks) != [0, 1, 2, 3] or any(
        sorted(s) != list(range(len(s))) for s in blocks.values()
    ):
        raise OfficialFormatError(
            f"{prefix}: expected block_group_0..3 with consecutive blocks, found "
            f"{ {g: sorted(s) for g, s in sorted(blocks.items())} }"
        )
    counts = tuple(len(blocks[g]) for g in range(4))
    bottleneck = any("conv_2" in p for p in parts.values())
    width = _arr(tree[f"{prefix}/~/initial_conv"]["w"]).shape[-1]
    if width % 64:
        raise OfficialFormatError(f"{prefix}: initial_conv has {width} output channels, not 64*k")
    projections = tuple(
        g
        for g in range(4)
        if "shortcut_conv" in parts[(g, 0)] or "shortcut_batchnorm" in parts[(g, 0)]
    )
    return {
        "prefix": prefix,
        "arch": _ARCHS.get((counts, bottleneck)),
        "blocks": counts,
        "bottleneck": bottleneck,
        "width_multiplier": width // 64,
        "layer1_projection": 0 in projections and not bottleneck,
        "projections": projections,
        "sources": sources,
    }


def _bn_entries(src_mod: str, dst: str) -> list[tuple[str, str, str, str]]:
    st = (src_mod + "/~/mean_ema", src_mod + "/~/var_ema")
    return [
        (src_mod, "scale", dst + ".weight", "vec"),
        (src_mod, "offset", dst + ".bias", "vec"),
        (st[0], "average", dst + ".running_mean", "vec"),
        (st[1], "average", dst + ".running_var", "vec"),
        (st[0], "counter", dst + ".num_batches_tracked", "count"),
        (st[0], "hidden", "", "skip"),
        (st[1], "hidden", "", "skip"),
        (st[1], "counter", "", "skip"),
    ]


def _torso_table(
    prefix: str, blocks: tuple[int, ...], bottleneck: bool, projections: tuple[int, ...]
) -> list[tuple[str, str, str, str]]:
    """``(haiku module, haiku name, torch key, kind)`` for every tensor of the torso."""
    p = prefix + "/~/"
    rows = [(p + "initial_conv", "w", "conv1.weight", "conv")]
    rows += [(p + "logits", "w", "", "skip"), (p + "logits", "b", "", "skip")]  # torso classifier
    rows += _bn_entries(p + "initial_batchnorm", "bn1")
    n_convs = 3 if bottleneck else 2
    for g, count in enumerate(blocks):
        for b in range(count):
            src = f"{p}block_group_{g}/~/block_{b}/~/"
            dst = f"layer{g + 1}.{b}."
            for i in range(n_convs):
                rows.append((f"{src}conv_{i}", "w", f"{dst}conv{i + 1}.weight", "conv"))
                rows += _bn_entries(f"{src}batchnorm_{i}", f"{dst}bn{i + 1}")
            if b == 0 and g in projections:
                rows.append((src + "shortcut_conv", "w", dst + "downsample.0.weight", "conv"))
                rows += _bn_entries(src + "shortcut_batchnorm", dst + "downsample.1")
    return rows


def expected_official_names(
    arch: str,
    prefix: str | None = None,
    projections: tuple[int, ...] | None = None,
) -> dict[str, list[str]]:
    """The haiku inventory ``{module: sorted names}`` (params and state merged) of an official
    v1 torso. ``prefix`` defaults to haiku's module name for the official class
    (``resnet50`` -> ``res_net50``); ``projections`` (groups whose first block has a
    projection shortcut) defaults to all four, as in the official ``networks.py``."""
    blocks, bottleneck = _SPEC_OF[arch]
    prefix = prefix or arch.replace("resnet", "res_net")
    projections = (0, 1, 2, 3) if projections is None else projections
    out: dict[str, set[str]] = defaultdict(set)
    for mod, name, _, _ in _torso_table(prefix, blocks, bottleneck, projections):
        if not mod.endswith("/~/logits"):  # only present when built with num_classes
            out[mod].add(name)
    return {m: sorted(v) for m, v in sorted(out.items())}


def _short(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _convert_value(v: Any, kind: str, like: torch.Tensor) -> torch.Tensor:
    a = _arr(v)
    shape = a.shape
    if kind == "conv":
        if a.ndim != 4:
            raise ValueError(f"conv weight must be 4-D HWIO, got shape {a.shape}")
        a = a.transpose(3, 2, 0, 1)
    elif kind == "vec":
        if a.ndim == 0 or any(s != 1 for s in a.shape[:-1]):
            raise ValueError(f"expected [C] or [1,..,1,C], got shape {a.shape}")
        a = a.reshape(-1)
    elif kind == "linear":
        if a.ndim != 2:
            raise ValueError(f"linear weight must be 2-D [in, out], got shape {a.shape}")
        a = a.T
    elif kind == "count":
        return torch.tensor(int(np.asarray(a).reshape(-1)[0]) if a.size else 0, dtype=like.dtype)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(f"shape {tuple(t.shape)} (from {shape}) != expected {tuple(like.shape)}")
    return t.to(like.dtype)


def _map_strict(
    tree: Mapping[str, Mapping[str, Any]],
    rows: list[tuple[str, str, str, str]],
    target: Mapping[str, torch.Tensor],
    owned: set[tuple[str, str]],
    what: str,
) -> dict[str, torch.Tensor]:
    """Fill ``target``'s keys from ``tree`` by ``rows``; every ``owned`` source tensor must be
    used exactly once and every target key filled with the right shape, else one error lists
    all problems."""
    out: dict[str, torch.Tensor] = {}
    missing, bad, used = [], [], set()
    optional = {"count", "skip"}
    for mod, name, key, kind in rows:
        src = (mod, name)
        if src in used:
            bad.append(f"{mod}/{name} used twice")
        if mod not in tree or name not in tree[mod]:
            if kind not in optional:
                missing.append(f"{mod}/{name}")
            continue
        used.add(src)
        if kind == "skip":
            continue
        if key not in target:
            bad.append(f"{mod}/{name} -> {key}: no such key in the torch module")
            continue
        try:
            out[key] = _convert_value(tree[mod][name], kind, target[key])
        except (ValueError, TypeError) as e:
            bad.append(f"{mod}/{name} -> {key}: {e}")
    unused = sorted(f"{m}/{n}" for m, n in owned - used)
    unfilled = sorted(k for k in target if k not in out and not k.endswith("num_batches_tracked"))
    if missing or unused or bad or unfilled:
        msg = [f"{what}: the checkpoint does not match"]
        if missing:
            msg.append(f"missing in checkpoint: {_short(missing)}")
        if unused:
            msg.append(f"unexpected (unused) in checkpoint: {_short(unused)}")
        if bad:
            msg.append(f"bad: {_short(bad)}")
        if unfilled:
            msg.append(f"torch keys not filled: {_short(unfilled)}")
        raise OfficialFormatError("; ".join(msg))
    for k in target:
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros_like(target[k])
    return out


def _build(arch: str, width: int, layer1_projection: bool) -> nn.Module:
    from torchvision.models.resnet import conv1x1

    from detcon.model.backbone import build_backbone

    net = build_backbone(arch, width_multiplier=width, padding="same")
    if layer1_projection:
        first: Any = net.layer1[0]  # a torchvision BasicBlock
        cin, cout = first.conv1.in_channels, first.conv2.out_channels
        first.downsample = nn.Sequential(conv1x1(cin, cout, 1), nn.BatchNorm2d(cout))
    return net


def _torso_state(path_or_dict: Any, which: str, arch: str | None):
    tree, sources = _select(path_or_dict, which)
    info = _inspect_tree(tree, sources)
    if info["arch"] is None:
        raise OfficialFormatError(
            f"{info['prefix']}: blocks per group {info['blocks']} "
            f"({'bottleneck' if info['bottleneck'] else 'basic'}) match none of {sorted(_SPEC_OF)}"
        )
    if arch is not None and arch != info["arch"]:
        raise OfficialFormatError(
            f"arch={arch!r} requested but the checkpoint holds a {info['arch']} "
            f"(blocks {info['blocks']}, {'bottleneck' if info['bottleneck'] else 'basic'})"
        )
    net = _build(info["arch"], info["width_multiplier"], info["layer1_projection"])
    blocks, bottleneck = info["blocks"], info["bottleneck"]
    rows = _torso_table(info["prefix"], blocks, bottleneck, info["projections"])
    owned = {(m, n) for m, d in tree.items() if m.startswith(info["prefix"] + "/~/") for n in d}
    owned |= {(m, n) for m, d in tree.items() if m == info["prefix"] for n in d}
    state = _map_strict(tree, rows, net.state_dict(), owned, f"{info['prefix']} -> {info['arch']}")
    return net, state, info, tree


def load_backbone(path_or_dict: Any, which: str = "online", arch: str | None = None) -> nn.Module:
    """Build our backbone (``padding="same"``) from an official checkpoint, in eval mode.

    ``path_or_dict``: a file for :func:`safe_load_official` or an already loaded structure
    (a haiku dict, ``{'params', 'state'}``, online/target variants, an experiment state, ...).
    ``which``: ``"online"`` (default) or ``"target"`` network. ``arch``: optional check of the
    inferred architecture (e.g. ``"resnet50"``). Depth comes from the block counts, width
    from the initial conv (``64 * width_multiplier`` channels). The mapping is strict: every
    torso tensor of the checkpoint is used exactly once and every parameter / running
    statistic of the module is filled with an equal shape, otherwise
    :class:`OfficialFormatError` lists the names.
    """
    net, state, info, _ = _torso_state(path_or_dict, which, arch)
    net.load_state_dict(state, strict=True)
    net.official_info = {k: v for k, v in info.items() if k != "sources"}
    return net.eval()


# --------------------------------------------------------------------------- heads


def _head_rows(mod: str) -> list[tuple[str, str, str, str]]:
    return [
        (mod + "/linear", "w", "fc1.weight", "linear"),
        (mod + "/linear", "b", "fc1.bias", "vec"),
        *_bn_entries(mod + "/batch_norm", "bn1"),
        (mod + "/linear_1", "w", "fc2.weight", "linear"),
    ]


def _head_state(tree: Mapping[str, Mapping[str, Any]], head: str):
    cands = sorted(
        m[: -len("/linear")]
        for m in tree
        if m.endswith("/linear") and re.fullmatch(rf"(?:.*/)?{head}", m[: -len("/linear")])
    )
    if not cands:
        return None
    if len(cands) > 1:
        raise OfficialFormatError(f"several {head} MLPs found: {cands}")
    mod = cands[0]
    from detcon.model.heads import MLP

    w1, w2 = _arr(tree[mod + "/linear"]["w"]), _arr(tree.get(mod + "/linear_1", {}).get("w"))
    if w1.ndim != 2 or w2.ndim != 2:
        raise OfficialFormatError(f"{mod}: linear / linear_1 weights must be 2-D [in, out]")
    mlp = MLP(int(w1.shape[0]), int(w1.shape[1]), int(w2.shape[1]))
    rows = _head_rows(mod)
    owned = {(m, n) for m, d in tree.items() if m.startswith(mod + "/") for n in d}
    state = _map_strict(tree, rows, mlp.state_dict(), owned, mod)
    return mlp, state


def load_heads(path_or_dict: Any, which: str = "online") -> dict[str, nn.Module | None]:
    """``{"projector": MLP | None, "predictor": MLP | None}`` from an official checkpoint, in
    eval mode (haiku ``networks.MLP``: ``linear`` -> ``fc1``, ``batch_norm`` -> ``bn1``,
    ``linear_1`` -> ``fc2``; strict like :func:`load_backbone`). The target network of BYOL /
    DetCon has no predictor."""
    tree, _ = _select(path_or_dict, which)
    out: dict[str, nn.Module | None] = {}
    for head in ("projector", "predictor"):
        got = _head_state(tree, head)
        if got is None:
            out[head] = None
            continue
        mlp, state = got
        mlp.load_state_dict(state, strict=True)
        out[head] = mlp.eval()
    return out


def _classifier_state(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor] | None:
    cands = sorted(m for m in tree if re.fullmatch(r"(?:.*/)?classifier", m))
    if len(cands) != 1 or "w" not in tree[cands[0]]:
        return None
    d = tree[cands[0]]
    out = {"weight": torch.from_numpy(np.ascontiguousarray(_arr(d["w"]).T, dtype=np.float32))}
    if "b" in d:
        out["bias"] = torch.from_numpy(np.ascontiguousarray(_arr(d["b"]), dtype=np.float32))
    return out


def convert(path: Any, which: str = "online") -> dict[str, Any]:
    """Convert an official checkpoint into our state dicts.

    Returns ``{"arch", "width_multiplier", "padding": "same", "layer1_projection",
    "backbone": state_dict, "projector": state_dict | None, "predictor": state_dict | None,
    "classifier": {"weight", "bias"} | None, "source": {...}}``. ``layer1_projection`` is
    true only for the official basic-block nets (ResNet18/34), whose ``backbone`` then has the
    extra ``layer1.0.downsample.*`` keys; use :func:`backbone_from_converted` to build the
    matching module.
    """
    obj = safe_load_official(path) if isinstance(path, str | os.PathLike) else path
    _, state, info, tree = _torso_state(obj, which, None)
    heads = {}
    for head in ("projector", "predictor"):
        got = _head_state(tree, head)
        heads[head] = None if got is None else got[1]
    return {
        "arch": info["arch"],
        "width_multiplier": info["width_multiplier"],
        "padding": "same",
        "layer1_projection": info["layer1_projection"],
        "backbone": state,
        "projector": heads["projector"],
        "predictor": heads["predictor"],
        "classifier": _classifier_state(tree),
        "source": {"which": which, "torso": info["prefix"], "sources": info["sources"]},
    }


def backbone_from_converted(converted: Mapping[str, Any]) -> nn.Module:
    """The backbone module (eval mode) for a :func:`convert` result, weights loaded."""
    net = _build(
        converted["arch"], converted["width_multiplier"], converted.get("layer1_projection", False)
    )
    net.load_state_dict(converted["backbone"], strict=True)
    return net.eval()


def to_checkpoint(path: str | os.PathLike) -> dict:
    """The detcon checkpoint dict of an official file (``kind`` ``detcon-import``, step 0):
    ``model`` (arch, width, output stride 32, SAME padding), ``online`` and, when the file has
    one, ``target`` state dicts in DetConNet names (backbone, projector, predictor)."""
    from detcon import checkpoint

    obj = safe_load_official(path)  # read once, no code runs
    nets, info = {}, None
    for which in ("online", "target"):
        try:
            conv = convert(obj, which)
        except OfficialFormatError:
            if which == "online":
                raise
            continue  # the DetCon release files hold one network
        if conv["layer1_projection"]:
            raise OfficialFormatError(
                f"{path}: an official {conv['arch']} has a projection shortcut in its first "
                "block group, which the torchvision layout lacks; only bottleneck nets "
                "(resnet50 and deeper, the released ones) import as detcon checkpoints"
            )
        state = {f"backbone.{k}": v for k, v in conv["backbone"].items()}
        for head in ("projector", "predictor"):
            if conv[head] is not None:
                state.update({f"{head}.{k}": v for k, v in conv[head].items()})
        nets[which], info = state, conv if info is None else info
    assert info is not None  # the online network converted, or raised above
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "kind": "detcon-import",
        "step": 0,
        "model": {
            "backbone": info["arch"],
            "width_multiplier": info["width_multiplier"],
            "output_stride": 32,
            "padding": "same",
        },
        "online": nets["online"],
        "target": nets.get("target"),
        "extra": {"source": str(path), "classifier": info["classifier"]},
    }
