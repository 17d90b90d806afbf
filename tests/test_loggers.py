"""train.loggers: JSONL always, TensorBoard, Weights & Biases and MLflow (offline), fan-out."""

import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from detcon import loggers
from detcon.config import load_config
from detcon.run_metrics import MetricsWriter

RECORDS = [
    {"step": 2, "epoch": 0, "loss": 2.5, "lr": 0.1},
    {"step": 4, "epoch": 0, "loss": 1.2345, "lr": 0.2},
    {"step": 6, "epoch": 1, "loss": 0.75, "lr": 0.05},
]


def _cfg(names, out):
    return load_config("quickstart_cpu", [f"train.loggers={names}", f"train.out={out}"])


def _masks_png(run_dir):
    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(run_dir / "masks.png")


def _run(run_dir, names, records=RECORDS, start_step=0, **kwargs):
    writer = MetricsWriter(run_dir, start_step=start_step, cfg=_cfg(names, run_dir), **kwargs)
    _masks_png(run_dir)  # training draws it after the first batch, before the first record
    for record in records:
        writer.write(record)
    writer.close()
    return writer


def test_parse_and_check_without_the_optional_packages(monkeypatch):
    assert loggers.parse_loggers("wandb, tensorboard,wandb") == ["wandb", "tensorboard"]
    assert loggers.parse_loggers("none") == []
    with pytest.raises(ValueError, match="'tb' is not one of"):
        loggers.parse_loggers("tb")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(loggers.LoggerUnavailableError, match="pip install wandb.*pip install ml"):
        loggers.check_available("tensorboard,wandb,mlflow")
    loggers.check_available("tensorboard")  # installed with detcon


def test_pretrain_refuses_a_missing_logger_before_training(monkeypatch, tmp_path, capsys):
    from detcon.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)
    rc = main(["pretrain", "--out", str(tmp_path / "run"), "train.loggers=wandb"])
    assert rc == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_jsonl_only_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    none = tmp_path / "none"
    none.mkdir()
    w = _run(none, "none")
    assert w.tb is None and not (none / "tb").exists()
    assert [json.loads(x)["loss"] for x in (none / "metrics.jsonl").read_text().splitlines()] == [
        r["loss"] for r in RECORDS
    ]
    assert not (none / "loss.png").exists()  # no logger wants it; training draws it itself
    run = tmp_path / "tb"
    run.mkdir()
    _run(run, "tensorboard")
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("pretrain/loss")] == [
        (2, 2.5),
        (4, 1.2345),
        (6, 0.75),
    ]
    assert set(acc.Tags()["images"]) == {"pictures/masks", "pictures/loss"}
    assert acc.Images("pictures/masks")[0].step == 2  # sent with the first record


class _FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished, self.id = kwargs, [], False, "fake123"

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def _fake_wandb(monkeypatch):
    fake = types.ModuleType("wandb")
    fake.runs = []

    def init(**kwargs):
        fake.runs.append(_FakeRun(**kwargs))
        return fake.runs[-1]

    fake.init = init
    fake.Image = lambda path: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_wandb_calls_against_its_documented_api(monkeypatch, tmp_path):
    """With a stand-in module: init's arguments, one log per record at its step, the two
    pictures, finish, and the run id kept for a resume."""
    fake = _fake_wandb(monkeypatch)
    _run(tmp_path, "wandb")
    run = fake.runs[0]
    kw = run.kwargs
    assert (kw["project"], kw["name"], kw["dir"], kw["id"]) == (
        "detcon",
        tmp_path.name,
        str(tmp_path),
        None,
    )
    assert kw["config"]["train"]["loggers"] == "wandb"
    scalars = [(s, d) for s, d in run.logged if "pretrain/loss" in d]
    assert [(s, d["pretrain/loss"], d["pretrain/epoch"]) for s, d in scalars] == [
        (2, 2.5, 0.0),
        (4, 1.2345, 0.0),
        (6, 0.75, 1.0),
    ]
    pictures = [
        (s, k, v[1].rsplit("/", 1)[-1])
        for s, d in run.logged
        for k, v in d.items()
        if k[:8] == "pictures"
    ]
    assert pictures == [(2, "pictures/masks", "masks.png"), (6, "pictures/loss", "loss.png")]
    assert run.finished and (tmp_path / "wandb_run_id").read_text().strip() == "fake123"
    _run(tmp_path, "wandb", records=RECORDS[2:], start_step=4)  # resumed
    assert fake.runs[1].kwargs["id"] == "fake123" and fake.runs[1].kwargs["resume"] == "allow"


def test_a_failing_logger_is_dropped_and_the_run_goes_on(monkeypatch, tmp_path, caplog):
    fake = _fake_wandb(monkeypatch)

    def broken(self, data, step):
        raise ConnectionError("network down")

    monkeypatch.setattr(_FakeRun, "log", broken)
    with caplog.at_level("WARNING", logger="detcon.train"):
        w = _run(tmp_path, "tensorboard,wandb")
    assert "logger wandb failed (ConnectionError: network down)" in caplog.text
    assert caplog.text.count("logger wandb failed") == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert w.loggers == [] and not fake.runs[0].finished  # dropped before close


def test_wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run(tmp_path, "wandb")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id)
    media = sorted(p.name.split("_")[0] for p in runs[0].glob("files/media/images/**/*.png"))
    assert media == ["loss", "masks"]
    # the offline log that `wandb sync` uploads (its records are wandb's internal format; the
    # scalars sent to it are checked with the stand-in module above)
    assert next(runs[0].glob("*.wandb")).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # sqlalchemy, inside mlflow
def test_mlflow_in_the_run_folder(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _run(tmp_path, "mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.run_name == tmp_path.name and run.info.status == "FINISHED"
    assert run.data.params["train.loggers"] == "mlflow"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(2, 2.5), (4, 1.2345), (6, 0.75)]
    assert {a.path for a in client.list_artifacts(run_id, "pictures")} == {
        "pictures/masks.png",
        "pictures/loss.png",
    }
    assert (tmp_path / "mlartifacts").is_dir()
    _run(tmp_path, "mlflow", records=[{"step": 8, "loss": 0.5}], start_step=6)  # resumed
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [2, 4, 6, 8]


def test_smoothed_and_loss_trend_by_hand(tmp_path):
    from detcon.run_metrics import loss_trend, smoothed

    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    path = tmp_path / "metrics.jsonl"
    losses = [3.0, 5.0, 9, 9, 9, 9, 2.0, 2.0]  # quarters of 2: [3, 5] and [2, 2]
    path.write_text(
        "".join(json.dumps({"step": i, "loss": v}) + "\n" for i, v in enumerate(losses))
    )
    t = loss_trend(path)
    # means 4 and 2; variances 2 and 0; noise = 2 * sqrt(2/2 + 0/2) = 2; drop 2 is not > 2
    assert (t["first"], t["last"], t["drop"], t["noise"], t["quarter"]) == (4.0, 2.0, 2.0, 2.0, 2)
    assert not t["falling"]
    path.write_text(path.read_text().replace('"loss": 2.0', '"loss": 1.5'))
    assert loss_trend(path)["falling"]  # drop 2.5 > 2
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert loss_trend(path) is None  # fewer than 8 values


def test_quickstart_note_explains_the_curve(tmp_path):
    from detcon.commands.pretrain import trend_note

    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "loss": 2.0 - 0.01 * i}) + "\n" for i in range(16))
    )
    note = trend_note(tmp_path, 16)
    assert note.startswith("loss: mean of the first 4 logged values 1.985, of the last 4 1.865")
    assert "does not show learning" in note and "16 steps" in note
    assert trend_note(tmp_path / "missing", 16) == ""
