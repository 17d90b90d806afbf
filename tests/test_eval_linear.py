"""Linear probe and kNN end to end on a tiny ImageFolder, through the CLI."""

import json

import torch
from test_eval_common import make_checkpoint, make_image_folder

from detcon.cli import main
from detcon.evaluation.linear import train_linear_probe


def test_linear_probe_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=g) * 0.1 + 100.0  # large offset: standardisation needed
    x[torch.arange(60), y] += 1.0
    probe = train_linear_probe(x, y, 3, epochs=30, lr=0.5, batch_size=16)
    assert (probe(x).argmax(1) == y).float().mean() == 1.0


def test_linear_and_knn_cli(tmp_path):
    data = make_image_folder(tmp_path / "data")
    ck = make_checkpoint(tmp_path / "ck.pt")
    common = [
        "--data",
        str(data),
        "--image-size",
        "32",
        "--batch-size",
        "9",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    assert main(["eval", "linear", "--checkpoint", str(ck), "--epochs", "20", *common]) == 0
    res = json.loads((tmp_path / "ck.eval_linear.json").read_text())
    assert res["protocol"] == "linear" and res["backbone_unchanged"] is True
    assert res["config"]["num_train"] == 18 and res["config"]["num_val"] == 18
    assert res["metrics"]["top1"] >= 0.8  # colour classes are easy even for a random net
    assert "top5" not in res["metrics"]  # 3 classes: a top-5 would always be 1.0

    out = tmp_path / "knn.json"
    assert (
        main(
            [
                "eval",
                "knn",
                "--backbone-weights",
                "random",
                "--arch",
                "resnet18",
                "--k",
                "3",
                "--out",
                str(out),
                *common,
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["backbone"]["kind"] == "random" and res["config"]["k"] == 3
    assert 0.0 <= res["metrics"]["top1"] <= 1.0


def test_too_many_workers_is_one_warning(tmp_path, caplog, monkeypatch):
    import warnings

    import detcon.commands.evaluate as evaluate

    data = make_image_folder(tmp_path / "data")
    ck = make_checkpoint(tmp_path / "ck.pt")
    monkeypatch.setattr(evaluate.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    args = [
        "eval",
        "knn",
        "--checkpoint",
        str(ck),
        "--data",
        str(data),
        "--image-size",
        "32",
        "--batch-size",
        "9",
        "--workers",
        "64",
        "--device",
        "cpu",
    ]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(args) == 0
    assert not [w for w in seen if "worker" in str(w.message)]  # no DataLoader warnings
    lines = [r for r in caplog.records if "more than the 1 cores" in r.getMessage()]
    assert len(lines) == 1
