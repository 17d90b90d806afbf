"""detcon pretrain --data DIR without --config: settings from the device and the folder."""

import types

import numpy as np
import pytest
import yaml
from PIL import Image

from detcon.auto_settings import batch_for, choose_settings, epochs_for, is_class_tree


def _folder(root, layout):
    paths = []
    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path)
        paths.append(path)
    return sorted(paths)


def test_epochs_from_the_folder_size():
    assert epochs_for(10_000, "cuda") == 1000  # 1000 * sqrt(1)
    assert epochs_for(100, "cuda") == 1000  # capped
    assert epochs_for(40_000, "cuda") == 500  # 1000 * sqrt(1/4)
    assert epochs_for(250_000, "cuda") == 200  # 1000 / 5
    assert epochs_for(1_281_167, "cuda") == 100  # ImageNet: 88 -> the floor of 100
    assert epochs_for(500, "cpu") == 100 and epochs_for(10**6, "cpu") == 1  # ~50k images seen
    with pytest.raises(ValueError):
        epochs_for(0, "cpu")


def test_batch_from_the_memory_estimate():
    gib = 2**30
    # per image: 2 views x 85.5 MiB x 1.5 = 256.5 MiB; 80% of 80 GiB = 65536 MiB -> 255 fit
    assert batch_for(80 * gib) == 128
    assert batch_for(141 * gib) == 256  # 115507 MiB / 256.5 = 450
    assert batch_for(24 * gib) == 64  # 19660.8 / 256.5 = 76
    assert batch_for(80 * gib, bf16=False) == 64  # float32 doubles the estimate
    assert batch_for(80 * gib, world_size=8) == 1024  # global batch
    assert batch_for(80 * gib, world_size=64) == 4096  # the official batch at most
    assert batch_for(80 * gib, n_images=100) == 64  # no larger than the folder
    assert batch_for(1 * gib) == 8  # at least 8


def test_class_tree_detection(tmp_path):
    tree = _folder(tmp_path / "t", ["a/1.png", "b/2.png"])
    assert is_class_tree(tmp_path / "t", tree)
    flat = _folder(tmp_path / "f", ["1.png", "a/2.png", "b/3.png"])
    assert not is_class_tree(tmp_path / "f", flat)
    one = _folder(tmp_path / "o", ["a/1.png", "a/2.png"])
    assert not is_class_tree(tmp_path / "o", one)


def _values(auto):
    return dict(item.split("=", 1) for item in auto.overrides)


def test_cpu_settings_and_user_overrides_win(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _folder(tmp_path, ["a/1.png", "a/2.png", "b/3.png", "b/4.png"])
    auto = choose_settings(str(tmp_path), ["model.backbone=resnet34"])
    v = _values(auto)
    assert v["train.device"] == "cpu" and v["data.image_size"] == "96"
    assert v["data.batch_size"] == "4"  # min(32, 4 images)
    assert v["train.epochs"] == str(min(1000, round(50_000 / 4)))
    assert v["data.class_tree"] == "true" and "model.backbone" not in v
    assert any("no GPU found" in r for r in auto.reasons)
    assert "train.device=cpu: no GPU found" in auto.summary()


def test_gpu_settings(tmp_path, monkeypatch):
    import torch

    props = types.SimpleNamespace(name="Fake GPU", total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    files = _folder(tmp_path, [f"{k}.png" for k in range(3)])
    v = _values(choose_settings(str(tmp_path), [], files * 200))  # 600 "images"
    assert (v["train.device"], v["model.backbone"], v["data.image_size"]) == (
        "cuda",
        "resnet50",
        "224",
    )
    assert v["train.precision"] == "bf16" and v["train.epochs"] == "1000"
    assert v["data.batch_size"] == "256"  # 128 per GPU x 2
    assert "data.class_tree" not in v
    v = _values(choose_settings(str(tmp_path), ["train.device=cpu"], files))
    assert v["model.backbone"] == "resnet18"  # asked for the CPU


def test_pretrain_with_data_and_no_config(tmp_path, monkeypatch, capsys):
    import torch

    from detcon.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "imgs"
    _folder(data, [f"{k}.png" for k in range(4)])
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(data), "--out", str(out), "--steps", "1"]
    args += ["--masks", "grid:2", "--image-size", "32", "--batch-size", "2"]
    args += ["model.proj_hidden=32", "model.pred_hidden=32", "model.proj_dim=16"]
    args += ["train.progress=false", "data.num_workers=0"]
    assert main(args) == 0
    text = capsys.readouterr().err
    assert "no --config: settings chosen for" in text
    assert text.index("model.backbone=resnet18") < text.index("finished at step 1")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["backbone"] == "resnet18" and saved["data"]["image_size"] == 32
    assert "train.device=cpu: no GPU found" in saved["train"]["auto_settings"]
    assert "data.image_size" not in saved["train"]["auto_settings"]  # the user's flag won


def test_a_folder_smaller_than_one_batch_is_repeated(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    files = _folder(tmp_path, ["1.png", "2.png", "3.png"])
    assert "data.repeat" not in _values(choose_settings(str(tmp_path), [], files))  # batch 3
    v = _values(choose_settings(str(tmp_path), ["data.batch_size=8"], files))
    assert v["data.repeat"] == "3"  # ceil(8 / 3)
    with pytest.raises(FileNotFoundError, match="no images in"):
        choose_settings(str(tmp_path / "none"), [], [])
