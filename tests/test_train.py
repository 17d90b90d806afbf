"""A few CPU steps of every method on tiny synthetic data; outputs; non-finite loss handling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import TINY_TRAIN, without_masks

from detcon import checkpoint
from detcon.config import load_config
from detcon.data import SyntheticDataset, TwoViewTransform
from detcon.train import NonFiniteLossError, train

TINY = TINY_TRAIN + ["optim.warmup_epochs=0"]


def tiny_cfg(tmp_path, *extra):
    method = next((e.split("=")[1] for e in extra if e.startswith("loss.method=")), "")
    return load_config(None, without_masks(TINY, method) + [f"train.out={tmp_path}"] + list(extra))


class Labelled(torch.utils.data.Dataset):
    """Synthetic items with a label (two classes), for the online probe."""

    classes = ["even", "odd"]

    def __init__(self, n=8):
        self.inner = SyntheticDataset(n, size=64, transform=TwoViewTransform(64, photometric=False))

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return {**self.inner[i], "label": i % 2}


# byol also runs the bf16 autocast path on CPU, detcon_s gradient accumulation (2 x 2 images)
EXTRA = {
    "byol": ["train.precision=bf16", "train.cpu_autocast=true"],
    "detcon_s": ["train.grad_accum=2"],
}


@pytest.mark.parametrize("method", ["detcon_b", "detcon_s", "byol", "simclr"])
def test_each_method_trains(method, tmp_path):
    cfg = tiny_cfg(tmp_path, f"loss.method={method}", "train.steps=2", *EXTRA.get(method, []))
    summary = train(cfg)
    assert summary["step"] == 2 and not summary["stopped"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loss"] > 0 and r["images_per_s"] > 0 and 0 <= r["data_wait"] <= 1
        assert r["memory_mb"] > 0 and 0.996 <= r["tau"] <= 1
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert ckpt["kind"] == "detcon-pretrain" and ckpt["step"] == 2
    assert ckpt["config"]["loss"]["method"] == method
    assert (ckpt["target"] is None) == (method in ("detcon_s", "simclr"))
    assert any(k.startswith("backbone.") for k in ckpt["online"])
    if method in ("byol", "simclr"):
        assert ckpt["config"]["masks"]["num_masks"] == 1
    for name in ("config.yaml", "masks.png", "loss.png"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tb").iterdir())


def test_weights_change_and_probe_learns_from_labels(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=2", "optim.base_lr=1.0")
    summary = train(cfg, dataset=Labelled())
    ckpt = checkpoint.load(summary["checkpoint"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["probe_acc"] <= 1 for r in rows)
    assert ckpt["extra"]["probe"]["weight"].shape == (2, 512)
    # the target moved towards the online weights but is not equal to them (EMA, tau < 1)
    on, tg = ckpt["online"]["projector.fc1.weight"], ckpt["target"]["projector.fc1.weight"]
    assert not torch.equal(on, tg)


class PoisonAfter(torch.utils.data.Dataset):
    """Items become NaN images after ``good`` reads (main-process loading)."""

    def __init__(self, good):
        self.inner, self.reads, self.good = SyntheticDataset(8, size=64), 0, good

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        item, self.reads = self.inner[i], self.reads + 1
        if self.reads > self.good:
            item["view_a"] = torch.full_like(item["view_a"], float("nan"))
        return item


def test_non_finite_loss_stops_and_keeps_last_good_state(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=5")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 1 .*last good state"):
        train(cfg, dataset=PoisonAfter(good=4))  # step 0 reads 4 good items, step 1 is NaN
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert ckpt["step"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["online"].values() if v.is_floating_point())


def test_cli_bad_key_is_a_clear_error(capsys):
    from detcon.cli import main

    assert main(["pretrain", "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.stepz'" in err and "train.steps" in err


def test_metrics_file_keeps_one_history(tmp_path):
    from detcon.run_metrics import MetricsWriter

    old = [{"step": s, "loss": float(s)} for s in (2, 4, 6)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in old) + '{"step": 8, "lo'  # a line cut by a crash
    )
    w = MetricsWriter(tmp_path, tensorboard=False, start_step=4)  # resumed from step 4
    w.write({"step": 6, "loss": -6.0})
    w.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 2, "loss": 2.0}, {"step": 4, "loss": 4.0}, {"step": 6, "loss": -6.0}]

    MetricsWriter(tmp_path, tensorboard=False, start_step=0).close()  # a fresh run
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_output_stride_16_trains_on_a_finer_grid(tmp_path):
    """model.output_stride=16: 64 px views give a 4x4 grid (2x2 at the official 32)."""
    cfg = tiny_cfg(tmp_path, "train.steps=1", "model.output_stride=16")
    assert train(cfg)["step"] == 1
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert ckpt["model"]["output_stride"] == 16
    assert ckpt["config"]["model"]["output_stride"] == 16


def test_output_stride_must_be_8_16_or_32(tmp_path):
    from detcon.config import ConfigError, resolve

    with pytest.raises(ConfigError, match="model.output_stride"):
        resolve(tiny_cfg(tmp_path, "model.output_stride=12"), dataset_size=8)


@pytest.mark.slow
def test_compiled_networks_train_save_and_resume(tmp_path, monkeypatch):
    """train.compile=true: a few steps, a checkpoint, a resume. Dynamo traces for real; the
    eager backend skips inductor's code generation (minutes on 2 cores)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = tiny_cfg(tmp_path, "train.steps=2", "train.compile=true", "train.ckpt_every=1")
    assert train(cfg)["step"] == 2
    ckpt = checkpoint.load(tmp_path / "last.pt")
    assert ckpt["step"] == 2 and not any("_orig_mod" in k for k in ckpt["online"])
    assert not any("_orig_mod" in k for k in ckpt["target"])
    cfg = tiny_cfg(tmp_path, "train.steps=3", "train.compile=true", "train.resume=auto")
    assert train(cfg)["step"] == 3


def test_device_side_augmentation_trains(tmp_path):
    """data.augment_on=device: the loader hands uint8 views plus the drawn colour parameters
    and the train step applies the colour ops batched; the run trains and its first batch's
    views are normalised floats like the host path's."""
    from detcon.data.device_augment import is_device_batch
    from detcon.data.loader import build_dataset

    cfg = tiny_cfg(tmp_path, "data.data=builtin", "data.augment_on=device", "train.steps=2")
    item = build_dataset(cfg)[0]
    assert is_device_batch(item) and item["view_a"].dtype == torch.uint8
    out = train(cfg)
    assert out["step"] == 2 and math.isfinite(out["loss"])


def test_subset_and_fraction_reach_the_training_dataset(tmp_path):
    from detcon.data.loader import build_dataset

    full = build_dataset(tiny_cfg(tmp_path, "data.data=builtin"))
    half = build_dataset(tiny_cfg(tmp_path, "data.data=builtin", "data.fraction=0.5"))
    assert 0 < len(half) < len(full)


def test_train_threads_sets_the_intra_op_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        train(tiny_cfg(tmp_path, "train.threads=1", "train.steps=1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
