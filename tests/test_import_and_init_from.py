"""``detcon import`` of an official-layout file -> export / eval / ``model.init_from``."""

from __future__ import annotations

import json

import pytest
import torch
from test_official_import import _haiku_tree, _merged, _np_save_dict
from tiny import TINY_TRAIN

from detcon import checkpoint
from detcon.cli import main
from detcon.config import load_config
from detcon.model.init_from import init_from_, read_init_state

HEADS = {"projector": (2048, 64, 32), "predictor": (32, 64, 32)}


@pytest.fixture(scope="module")
def official_r50(tmp_path_factory):
    """An official-layout ResNet-50 DetCon file (np.save of a merged dict), small heads."""
    params, state = _haiku_tree("ResNet50", seed=3, heads=HEADS)
    path = tmp_path_factory.mktemp("official") / "resnet50_detcon_b_tiny.npy"
    return _np_save_dict(path, _merged(params, state))


@pytest.mark.slow
def test_import_then_export_torchvision_loads_strictly(official_r50, tmp_path):
    import torchvision

    out = tmp_path / "imported.pt"
    assert main(["import", str(official_r50), "--out", str(out)]) == 0
    ck = checkpoint.load(out)
    assert ck["kind"] == "detcon-import" and ck["model"]["padding"] == "same"
    assert ck["model"]["backbone"] == "resnet50" and ck["target"] is None
    assert any(k.startswith("projector.") for k in ck["online"])
    tv = tmp_path / "r50_tv.pth"
    assert main(["export", str(out), "--format", "torchvision", "--out", str(tv)]) == 0
    model = torchvision.models.resnet50(weights=None)
    missing, unexpected = model.load_state_dict(torch.load(tv, weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    for fmt, name in (("safetensors", "r50.safetensors"), ("detectron2", "r50_d2.pkl")):
        assert main(["export", str(out), "--format", fmt, "--out", str(tmp_path / name)]) == 0


def test_import_refuses_malicious_file_without_running_it(tmp_path, capsys):
    import os
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    assert main(["import", str(bad), "--out", str(tmp_path / "o.pt")]) == 2
    assert not marker.exists() and not (tmp_path / "o.pt").exists()
    assert "refusing to load" in capsys.readouterr().err


def test_init_from_state_dict_strict_and_report(tmp_path):
    import torchvision

    from detcon.model import DetConNet

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    state, info = read_init_state(path)
    assert info["kind"] == "state_dict" and not any(".fc." in k for k in state)
    net = DetConNet.build("resnet18", proj_hidden=16, proj_dim=8, pred_hidden=16)
    report = init_from_(net, path)
    assert report["heads"] == [] and not report["missing"]
    assert torch.equal(net.backbone.conv1.weight, tv.conv1.weight)
    wide = DetConNet.build("resnet34", proj_hidden=16, proj_dim=8, pred_hidden=16)
    with pytest.raises(ValueError, match="does not fit the backbone"):
        init_from_(wide, path)  # resnet18 weights into a resnet34: strict refuses
    report = init_from_(wide, path, strict=False)
    assert report["missing"] and report["loaded"] > 0


@pytest.mark.slow
def test_pretraining_starts_from_an_imported_checkpoint(official_r50, tmp_path):
    from detcon.train import train

    imported = tmp_path / "imported.pt"
    assert main(["import", str(official_r50), "--out", str(imported)]) == 0
    overrides = [o for o in TINY_TRAIN if not o.startswith("model.")] + [
        "model.backbone=resnet50",
        "model.proj_hidden=64",
        "model.proj_dim=32",
        "model.pred_hidden=64",
        f"model.init_from={imported}",
        "train.steps=1",
        "optim.warmup_epochs=0",
        f"train.out={tmp_path / 'run'}",
    ]
    summary = train(load_config(None, overrides))
    ck = checkpoint.load(summary["checkpoint"])
    src = checkpoint.load(imported)["online"]
    # one step of LARS moved the weights a little from the imported ones, not from random
    w0, w1 = src["backbone.conv1.weight"], ck["online"]["backbone.conv1.weight"]
    assert 0 < float((w1 - w0).norm() / w0.norm()) < 0.05
    tg = ck["target"]["projector.fc1.weight"]  # the target started as the imported online net
    assert float((tg - src["projector.fc1.weight"]).norm() / tg.norm()) < 0.05
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == 1
