"""Evaluation plumbing: backbone sources, result JSON, and the data fabricators shared by the
other ``test_eval_*`` files (ImageFolder, checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detcon import checkpoint as ckpt_io
from detcon.evaluation.common import (
    assert_unchanged,
    load_backbone,
    snapshot_state,
    write_result,
)
from detcon.model.backbone import build_backbone


def make_checkpoint(path: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """A checkpoint in the layout of :mod:`detcon.checkpoint` with a random backbone."""
    torch.manual_seed(seed)
    net = build_backbone(arch)
    for m in net.modules():  # non-trivial BN statistics so a lost buffer would be noticed
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    online = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    online["projector.0.weight"] = torch.randn(8, net.out_channels)
    online["projector.0.bias"] = torch.zeros(8)
    target = {k: v + 1 if v.is_floating_point() else v for k, v in online.items()}
    ckpt = {
        "format_version": 1,
        "kind": "detcon-pretrain",
        "step": 7,
        "config": {},
        "model": {"backbone": arch, "width_multiplier": 1},
        "online": online,
        "target": target,
        "optimizer": {},
        "scaler": None,
        "rng": {},
        "extra": {},
    }
    ckpt_io.save_atomic(ckpt, path)
    return path


def make_image_folder(root: Path, n_per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """ImageFolder train/ and val/ with 3 easy classes: mostly red, green or blue images."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c, name in enumerate(["red", "green", "blue"]):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                img[..., c] = rng.integers(170, 256, (size, size), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_checkpoint_backbone_loads_strictly_online_and_target(tmp_path):
    ck = make_checkpoint(tmp_path / "ck.pt")
    online, src = load_backbone(checkpoint=str(ck))
    target, _ = load_backbone(checkpoint=str(ck), which="target")
    raw = ckpt_io.load(ck)
    assert src["arch"] == "resnet18" and src["step"] == 7 and src["which"] == "online"
    assert torch.equal(online.state_dict()["conv1.weight"], raw["online"]["backbone.conv1.weight"])
    assert torch.equal(target.state_dict()["conv1.weight"], raw["target"]["backbone.conv1.weight"])
    assert torch.equal(
        online.state_dict()["layer4.1.bn2.running_var"],
        raw["online"]["backbone.layer4.1.bn2.running_var"],
    )


def test_backbone_source_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_backbone()
    with pytest.raises(ValueError, match="exactly one"):
        load_backbone(checkpoint="x.pt", backbone_weights="random")
    with pytest.raises(FileNotFoundError):
        load_backbone(checkpoint=str(tmp_path / "missing.pt"))
    # torchvision weights are never downloaded: with an empty hub cache we get a clear error
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(FileNotFoundError, match="never downloads"):
            load_backbone(backbone_weights="torchvision", arch="resnet18")
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_torchvision_weights_from_cache(tmp_path):
    import torchvision

    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
        ref = torchvision.models.resnet18()
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)
        net, src = load_backbone(backbone_weights="torchvision", arch="resnet18")
        assert src["kind"] == "torchvision"
        assert torch.equal(
            net.state_dict()["layer1.0.conv1.weight"], ref.state_dict()["layer1.0.conv1.weight"]
        )
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_write_result_and_unchanged_check(tmp_path):
    p = write_result({"metrics": {"top1": 0.5}, "t": torch.tensor([1, 2])}, tmp_path / "r.json")
    assert json.loads(p.read_text()) == {"metrics": {"top1": 0.5}, "t": [1, 2]}
    net, _ = load_backbone(backbone_weights="random", arch="resnet18")
    before = snapshot_state(net)
    assert_unchanged(net, before)
    with torch.no_grad():
        net.layer1[0].bn1.running_mean[0] += 1e-7
    with pytest.raises(AssertionError, match="changed"):
        assert_unchanged(net, before)


@pytest.mark.slow
def test_backbone_from_checkpoint_is_strict_and_keeps_the_padding(tmp_path):
    ck = make_checkpoint(tmp_path / "ck.pt")
    raw = ckpt_io.load(ck)
    net, info = ckpt_io.backbone_from_checkpoint(ck, "target")
    assert info == {
        "path": str(ck.resolve()),
        "which": "target",
        "arch": "resnet18",
        "width_multiplier": 1,
        "padding": "torch",  # a checkpoint without the key was trained with torch padding
        "step": 7,
    }
    for k, v in net.state_dict().items():
        assert torch.equal(v, raw["target"][f"backbone.{k}"]), k
    # the padding recorded in the checkpoint is used unless overridden
    raw["model"]["padding"] = "same"
    ckpt_io.save_atomic(raw, tmp_path / "same.pt")
    assert ckpt_io.backbone_from_checkpoint(tmp_path / "same.pt")[0].padding == "same"
    net, info = ckpt_io.backbone_from_checkpoint(tmp_path / "same.pt", padding="torch")
    assert net.padding == "torch" and info["padding"] == "torch"
    _, src = load_backbone(checkpoint=tmp_path / "same.pt")
    assert src["kind"] == "checkpoint" and src["padding"] == "same"
    # a missing or an extra backbone key is an error naming it
    del raw["online"]["backbone.layer2.0.bn1.running_var"]
    raw["online"]["backbone.layer9.weight"] = torch.zeros(1)
    ckpt_io.save_atomic(raw, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt.*layer2\.0\.bn1\.running_var.*layer9\.weight"):
        ckpt_io.backbone_from_checkpoint(tmp_path / "bad.pt")
    assert ckpt_io.backbone_from_checkpoint(tmp_path / "bad.pt", "target")[1]["which"] == "target"
