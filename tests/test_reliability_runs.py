"""Run-folder reliability: refusing to overwrite a run, resuming only from a checkpoint that
loads, saving on signals with a broken pipe, stale temporary files, checkpoint checksums,
resume config checks, the plan line and the final summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import TINY_TRAIN

from detcon import checkpoint
from detcon.cli import main
from detcon.config import load_config
from detcon.train import train

TINY = TINY_TRAIN + ["optim.warmup_epochs=0", "train.ckpt_every=100"]


def cfg(out, *extra):
    return load_config(None, TINY + [f"train.out={out}", *extra])


def snapshot(folder: Path) -> dict:
    """Every file under ``folder``: relative path -> (bytes, mtime_ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run2(tmp_path_factory) -> Path:
    """A finished 2-step run with kept step_0000001.pt and step_0000002.pt (read-only use)."""
    out = tmp_path_factory.mktemp("run2")
    train(cfg(out, "train.steps=2", "train.keep_every=1"))
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def empty_config(tmp_path) -> str:
    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    return str(path)


def cli(tmp_path, out, *args) -> list[str]:
    """``detcon pretrain`` arguments: the defaults + the tiny overrides; flags (``--resume``)
    and ``KEY=VALUE`` overrides in ``args``."""
    flags = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if not a.startswith("--")]
    head = ["pretrain", "--config", empty_config(tmp_path), "--out", str(out), *flags]
    return head + TINY + overrides


# ---------------------------------------------------------------- 1: refuse to overwrite a run


def test_rerun_without_resume_is_refused_and_touches_nothing(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"--resume.*another --out.*--overwrite"):
        train(cfg(out, "train.steps=2"))
    assert snapshot(out) == before
    capsys.readouterr()
    assert main(cli(tmp_path, out, "train.steps=2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("--resume" in line and "--overwrite" in line for line in err), err
    assert snapshot(out) == before


def test_overwrite_moves_the_old_run_aside_and_starts_fresh(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "run")
    old_last = (out / "last.pt").read_bytes()
    assert main(cli(tmp_path, out, "train.steps=1", "--overwrite")) == 0
    aside = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "last.pt").read_bytes() == old_last
    assert (aside[0] / "step_0000002.pt").is_file() and not list(out.glob("step_*.pt"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert len(list((out / "tb").iterdir())) == 1  # one TensorBoard event file
    assert checkpoint.load(out / "last.pt")["step"] == 1


def test_fresh_folders_and_stale_temps_alone_are_not_a_run(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "metrics.jsonl").write_text("")  # empty: not a history
    (tmp_path / "new" / ".last.pt.abcd1234.tmp.pt").write_bytes(b"partial")
    assert train(cfg(tmp_path / "new", "train.steps=1"))["step"] == 1


# ---------------------------------------------------------------- 2: --resume never restarts


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_kept_checkpoint_that_loads(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "run")
    (out / "last.pt").write_bytes(b"not a checkpoint")
    (out / "step_0000002.pt").write_bytes(b"cut short")
    kept1 = (out / "step_0000001.pt").read_bytes()
    capsys.readouterr()
    summary = train(cfg(out, "train.steps=3", "train.resume=auto"))
    err = capsys.readouterr().err
    assert "step_0000001.pt" in err and "last.pt does not load" in err, err
    assert "resumed from" in err and "at step 1" in err
    assert summary["step"] == 3 and checkpoint.load(out / "last.pt")["step"] == 3
    assert (out / "step_0000001.pt").read_bytes() == kept1  # history kept
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_resume_with_last_pt_a_directory_uses_a_kept_checkpoint(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "run")
    (out / "last.pt").unlink()
    (out / "last.pt").mkdir()
    capsys.readouterr()
    summary = train(cfg(out, "train.steps=2", "train.resume=auto"))
    err = capsys.readouterr().err
    assert "last.pt is not a file" in err and "step_0000002.pt" in err, err
    assert summary["step"] == 2 and summary["finished_before"]


def test_resume_refuses_a_history_without_a_loadable_checkpoint(run2, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_bytes((run2 / "metrics.jsonl").read_bytes())
    (out / "last.pt").write_bytes(b"garbage")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds a run .* no loadable checkpoint"):
        train(cfg(out, "train.steps=2", "train.resume=auto"))
    assert snapshot(out) == before
    capsys.readouterr()
    assert main(cli(tmp_path, out, "train.steps=2", "--resume")) == 2
    assert "no loadable checkpoint" in capsys.readouterr().err
    assert snapshot(out) == before


def test_resume_into_a_new_folder_says_it_starts_from_zero(tmp_path, capsys):
    out = tmp_path / "new"
    summary = train(cfg(out, "train.steps=1", "train.resume=auto"))
    assert summary["step"] == 1
    assert f"no checkpoint in {out}: starting from step 0" in capsys.readouterr().err


# ---------------------------------------------------------------- 3: signals with a broken pipe


def test_stop_flag_handles_sighup_like_sigterm():
    from detcon.runs import StopFlag

    flag = StopFlag()
    try:
        assert signal.getsignal(signal.SIGHUP) == flag._handle
        os.kill(os.getpid(), signal.SIGHUP)
        assert flag.stop and flag.signum == signal.SIGHUP
    finally:
        flag.close()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_logging_to_a_closed_stderr_does_not_raise(monkeypatch):
    import io
    import logging

    from detcon.logs import setup_logging

    setup_logging()
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    logging.getLogger("detcon.train").warning("the terminal has gone away")


@pytest.mark.slow
def test_ctrl_c_with_the_pipe_closed_still_saves(tmp_path):
    """``detcon pretrain ... 2>&1 | tee log``: Ctrl-C kills tee too; writing the progress bar
    and the log to the closed pipe must not prevent the final save."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "detcon", "pretrain", "--config", empty_config(tmp_path)]
    cmd += TINY + ["train.steps=400", "train.progress=true", f"train.out={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        proc.stdout.close()  # the reader (tee) is gone
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ckpt = checkpoint.load(out / "last.pt")
    assert 1 <= ckpt["step"] < 400
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------- 4: stale temporary files


def test_stale_temporary_files_are_removed_at_start(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "run")
    stale = [out / ".last.pt.k3j_9x0q.tmp.pt", out / ".metrics.jsonl.a1b2c3d4.tmp.jsonl"]
    keep = [out / "notes.tmp.pt", out / ".last.pt.backup", out / ".last.pt.short.tmp.pt"]
    for p in stale + keep:
        p.write_bytes(b"x")
    capsys.readouterr()
    train(cfg(out, "train.steps=2", "train.resume=auto"))
    assert "removed 2 stale temporary file(s)" in capsys.readouterr().err
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"x" for p in keep)


# ---------------------------------------------------------------- 5: checksums, finite weights


def test_a_changed_tensor_element_is_refused(run2, tmp_path):
    raw = torch.load(run2 / "last.pt", weights_only=True)
    assert raw["checksum"].startswith("sha256:")
    raw["online"]["projector.fc1.weight"][0, 0] += 1e-3
    torch.save(raw, tmp_path / "bad.pt")  # the old checksum kept
    with pytest.raises(ValueError, match=r"bad\.pt.*damaged") as info:
        checkpoint.load(tmp_path / "bad.pt")
    assert type(info.value).__name__ == "CheckpointCorruptError"


def test_a_flipped_byte_in_tensor_data_is_refused_by_load_export_and_eval(run2, tmp_path):
    from detcon.evaluation.common import load_backbone
    from detcon.export import export_checkpoint

    data = bytearray((run2 / "last.pt").read_bytes())
    tensor = checkpoint.load(run2 / "last.pt")["online"]["backbone.conv1.weight"]
    needle = tensor.contiguous().view(torch.uint8).numpy().tobytes()[:256]
    at = data.find(needle)
    assert at > 0 and data.find(needle, at + 1) < 0
    data[at + 101] ^= 0x01  # a low mantissa bit of one weight: finite, a tiny change
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    raw = torch.load(bad, weights_only=True)  # torch itself does not notice
    assert not torch.equal(raw["online"]["backbone.conv1.weight"], tensor)
    with pytest.raises(ValueError, match=r"flipped\.pt.*damaged"):
        checkpoint.load(bad)
    with pytest.raises(ValueError, match="damaged"):
        export_checkpoint(bad, "torchvision", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    with pytest.raises(ValueError, match="damaged"):
        load_backbone(checkpoint=str(bad))


def test_non_finite_weights_are_refused_even_with_a_valid_checksum(run2, tmp_path):
    raw = checkpoint.load(run2 / "last.pt")
    raw["target"]["predictor.fc1.weight"][1, 2] = float("nan")
    checkpoint.save_atomic(raw, tmp_path / "nan.pt")  # fresh checksum
    with pytest.raises(ValueError, match=r"nan\.pt.*non-finite.*target.*predictor\.fc1\.weight"):
        checkpoint.load(tmp_path / "nan.pt")


def test_old_checkpoints_without_a_checksum_still_load(run2, tmp_path):
    raw = checkpoint.load(run2 / "last.pt")
    del raw["checksum"]
    raw["format_version"] = 1
    torch.save(raw, tmp_path / "v1.pt")
    assert checkpoint.load(tmp_path / "v1.pt")["step"] == 2
    raw["format_version"] = checkpoint.FORMAT_VERSION
    torch.save(raw, tmp_path / "nosum.pt")
    if checkpoint.FORMAT_VERSION >= 2:  # a new-format file without its checksum: damaged
        with pytest.raises(ValueError, match="checksum"):
            checkpoint.load(tmp_path / "nosum.pt")


def test_resume_skips_a_damaged_last_pt(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "run")
    raw = torch.load(out / "last.pt", weights_only=True)
    raw["online"]["projector.fc1.weight"].mul_(2)
    torch.save(raw, out / "last.pt")
    capsys.readouterr()
    summary = train(cfg(out, "train.steps=2", "train.resume=auto"))
    err = capsys.readouterr().err
    assert "damaged" in err and "step_0000002.pt" in err, err
    assert summary["finished_before"] and summary["step"] == 2


# ---------------------------------------------------------------- 6: resume config checks


def test_resume_from_another_architecture_is_one_line_exit_2(run2, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"model\.proj_dim=32 .* model\.proj_dim=16"):
        train(cfg(tmp_path / "a", f"train.resume={run2 / 'last.pt'}", "model.proj_dim=16"))
    assert not (tmp_path / "a").exists()
    capsys.readouterr()
    resume = f"train.resume={run2 / 'last.pt'}"
    code = main(cli(tmp_path, tmp_path / "b", resume, "loss.method=detcon_s"))
    err = capsys.readouterr().err
    assert code == 2 and "loss.method='detcon_b'" in err and "Traceback" not in err, err


def test_resume_without_a_saved_config_still_refuses_another_model(run2, tmp_path):
    raw = checkpoint.load(run2 / "last.pt")
    raw["config"] = {}
    checkpoint.save_atomic(raw, tmp_path / "noconfig.pt")
    resume = f"train.resume={tmp_path / 'noconfig.pt'}"
    with pytest.raises(
        ValueError, match=r"model\.backbone='resnet18' .* model\.backbone='resnet34'"
    ):
        train(cfg(tmp_path / "a", resume, "model.backbone=resnet34"))
    with pytest.raises(ValueError, match=r"noconfig\.pt: its weights do not fit this model"):
        train(cfg(tmp_path / "b", resume, "model.proj_dim=16"))


def test_resume_with_a_changed_seed_or_batch_warns(run2, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "c"
    summary = train(cfg(out, f"train.resume={run2 / 'last.pt'}", "train.steps=2", "train.seed=1"))
    err = capsys.readouterr().err
    assert "changed config" in err and "train.seed: 0 -> 1" in err, err
    assert "train.out" not in err.split("changed config")[1].splitlines()[0]
    assert summary["step"] == 2


# ---------------------------------------------------------------- 8 / 17: plan, summary


def test_plan_line_before_the_first_step(tmp_path, capsys):
    train(cfg(tmp_path, "train.steps=3"))
    err = capsys.readouterr().err
    assert "plan: 3 steps = 1.5 epochs of 8 images, 12 images seen" in err, err


def test_resuming_a_finished_run_reports_its_last_loss(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "run")
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    summary = train(cfg(out, "train.steps=2", "train.resume=auto"))
    assert summary["loss"] == pytest.approx(last["loss"])
    capsys.readouterr()
    assert main(cli(tmp_path, out, "train.steps=2", "--resume")) == 0
    err = capsys.readouterr().err
    assert "already finished at step 2" in err and "nan" not in err, err


def test_only_rank_0_prints_the_summary(monkeypatch, tmp_path, capsys):
    import detcon.distributed
    import detcon.train

    fake = {"run_dir": str(tmp_path), "checkpoint": "x", "step": 5, "loss": 1.0}
    fake.update(stopped=False, finished_before=False, seconds=1.0)
    monkeypatch.setattr(detcon.train, "train", lambda *a, **k: dict(fake))
    # rank 1 of a torchrun job: after destroy() there is no process group and it reads as rank 0
    rank = {"main": False}
    monkeypatch.setattr(detcon.distributed, "is_main", lambda: rank["main"])
    monkeypatch.setattr(detcon.distributed, "destroy", lambda: rank.update(main=True))
    args = ["pretrain", "--config", empty_config(tmp_path), f"train.out={tmp_path}"]
    assert main(args) == 0
    assert "finished at step 5" not in capsys.readouterr().err
    rank["main"] = True  # rank 0
    assert main(args) == 0
    assert "finished at step 5" in capsys.readouterr().err
