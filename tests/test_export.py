"""Exports round-trip exactly and load into the reference frameworks."""

import pickle

import pytest
import torch
import torchvision
from test_eval_common import make_checkpoint

from detcon import checkpoint as ckpt_io
from detcon.cli import main
from detcon.export import (
    FORMATS,
    export_checkpoint,
    from_detectron2_names,
    read_export,
    to_detectron2_names,
)
from detcon.model.backbone import build_backbone


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "ck.pt")


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_roundtrip(ckpt, tmp_path, fmt):
    out = tmp_path / f"bb.{fmt}"
    info = export_checkpoint(ckpt, fmt, out)
    assert out.is_file() and info["framework"] in ("torchvision", "timm")
    source = ckpt_io.backbone_state_dict(ckpt_io.load(ckpt))
    back = read_export(fmt, out)
    for k, v in back.items():
        assert torch.equal(v, source[k]), k
    dropped = set(source) - set(back)
    assert dropped == (
        {k for k in source if k.endswith("num_batches_tracked")} if fmt == "detectron2" else set()
    )
    if fmt != "detectron2":  # the documented user path: strict=False, missing exactly fc
        ref = torchvision.models.resnet18()
        res = ref.load_state_dict(back, strict=False)
        assert set(res.missing_keys) == {"fc.weight", "fc.bias"} and not res.unexpected_keys


def test_target_export_differs(ckpt, tmp_path):
    export_checkpoint(ckpt, "safetensors", tmp_path / "t.safetensors", which="target")
    back = read_export("safetensors", tmp_path / "t.safetensors")
    raw = ckpt_io.load(ckpt)["target"]
    assert torch.equal(back["conv1.weight"], raw["backbone.conv1.weight"])


def test_detectron2_layout_and_bijection(ckpt, tmp_path):
    out = tmp_path / "d2.pkl"
    assert main(["export", str(ckpt), "--format", "detectron2", "--out", str(out)]) == 0
    with open(out, "rb") as f:
        obj = pickle.load(f)
    assert obj["matching_heuristics"] is True and "__author__" in obj
    model = obj["model"]
    for key in (
        "stem.conv1.weight",
        "stem.conv1.norm.running_var",
        "res2.0.conv1.weight",
        "res2.1.conv2.norm.bias",
        "res3.0.shortcut.weight",
        "res5.0.shortcut.norm.weight",
    ):
        assert key in model, key
    assert all(type(v).__module__ == "numpy" for v in model.values())
    # resnet50 names both ways: bijective on all non-counter keys
    sd = {
        k: v
        for k, v in build_backbone("resnet50").state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    d2 = to_detectron2_names(sd)
    assert len(d2) == len(sd)
    back = from_detectron2_names({k: v.numpy() for k, v in d2.items()})
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert "res5.2.conv3.norm.running_mean" in d2 and "res4.0.shortcut.weight" in d2
    with pytest.raises(KeyError, match="unexpected"):
        to_detectron2_names({"fc.weight": torch.zeros(1)})


def test_refuses_broken_checkpoint(tmp_path):
    ck = make_checkpoint(tmp_path / "ck.pt")
    raw = ckpt_io.load(ck)
    del raw["online"]["backbone.layer4.1.conv2.weight"]
    ckpt_io.save_atomic(raw, tmp_path / "bad.pt")
    out = tmp_path / "bad.pth"
    with pytest.raises(ValueError, match=r"missing=\['layer4.1.conv2.weight'\]"):
        export_checkpoint(tmp_path / "bad.pt", "torchvision", out)
    assert not out.exists() and not list(tmp_path.glob(".bad.pth.*"))


def test_timm_strict_load_when_installed(ckpt, tmp_path):
    timm = pytest.importorskip("timm")
    out = tmp_path / "timm.pth"
    assert export_checkpoint(ckpt, "timm", out)["framework"] == "timm"
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.load_state_dict(read_export("timm", out), strict=True)


@pytest.mark.parametrize("fmt", ["mmdet", "mmseg"])
def test_openmmlab_layout_loads_as_mmengine_does(ckpt, tmp_path, fmt):
    """An mmengine checkpoint: ``state_dict`` of ``backbone.``-prefixed torchvision names.
    mmengine's ``Pretrained`` init with ``prefix="backbone."`` keeps the keys with the prefix
    and strips it; the result loads into torchvision's ResNet (= mmdet's, style="pytorch")."""
    out = tmp_path / f"{fmt}.pth"
    assert main(["export", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    obj = torch.load(out, map_location="cpu", weights_only=True)
    assert set(obj) == {"state_dict", "meta"}
    assert obj["meta"]["format"] == fmt and obj["meta"]["arch"] == "resnet18"
    keys = list(obj["state_dict"])
    assert keys and all(k.startswith("backbone.") for k in keys)
    assert "backbone.layer4.1.bn2.running_var" in keys and "backbone.conv1.weight" in keys
    stripped = {k[len("backbone.") :]: v for k, v in obj["state_dict"].items()}
    source = ckpt_io.backbone_state_dict(ckpt_io.load(ckpt))
    assert set(stripped) == set(source)
    assert all(torch.equal(stripped[k], source[k]) for k in source)
    res = torchvision.models.resnet18().load_state_dict(stripped, strict=False)
    assert set(res.missing_keys) == {"fc.weight", "fc.bias"} and not res.unexpected_keys
    from detcon.export import from_openmmlab

    with pytest.raises(KeyError, match="prefix"):
        from_openmmlab({"state_dict": {"conv1.weight": torch.zeros(1)}})


def test_command_formats_match_the_module():
    from detcon.commands import export as command

    assert command.FORMATS == FORMATS
