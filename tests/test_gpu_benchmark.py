"""benchmarks/gpu_benchmark.py: the dry run goes through every stage at toy size on the CPU and
writes its JSON; a failing stage is recorded and the next one runs; stages that no longer fit
the budget are skipped; the efficiency stage only reads efficiency.py (never runs it here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_benchmark  # noqa: E402


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_benchmark.py"),
            "--dry-run",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )  # a process of its own: the watchdog ends the process it runs in
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    st = data["stages"]
    assert data["meta"]["dry_run"] and data["meta"]["peak_tflops"] == 989.0
    for name in ("eager", "loss_share", "memory", "device_augment", "compiled", "efficiency_gpu"):
        assert st[name]["status"] == "ok", (name, st[name])
    for stage in ("eager", "compiled"):
        for m in ("detcon_b", "byol"):
            r = st[stage][m]
            assert r["median_step_ms"] > 0 and r["images_per_s"] > 0 and r["mfu"] is None  # CPU
        assert st[stage]["detcon_b_over_byol"] > 0
    flops = st["eager"]["detcon_b"]["tflop_per_step"], st["eager"]["byol"]["tflop_per_step"]
    assert flops[0] > flops[1] > 0  # DetCon_B's heads run on K regions per view
    assert 0 < st["loss_share"]["detcon_b"]["share"] < 1
    assert st["device_augment"]["apply_on_device"]["items_per_s"] > 0
    assert st["efficiency_gpu"]["ran"] is False
    assert "DetCon_B / BYOL step time" in proc.stdout and "device augment" in proc.stdout


def test_failed_and_skipped_stages_are_recorded(tmp_path):
    report = gpu_benchmark.Report(tmp_path / "r.json", {"device": "cpu"})
    budget = gpu_benchmark.Budget(100.0)

    def boom():
        raise RuntimeError("compile failed")

    failed = gpu_benchmark.run_stage(report, budget, "compiled", 0, boom)
    ok = gpu_benchmark.run_stage(report, budget, "next", 0, lambda: {"x": 1})
    late = gpu_benchmark.run_stage(report, gpu_benchmark.Budget(1.0), "late", 50, lambda: {})
    assert failed["status"] == "failed" and "compile failed" in failed["error"]
    assert ok == {"status": "ok", "x": 1, "seconds": ok["seconds"]}
    assert late["status"] == "skipped" and "needs" in late["reason"]
    saved = json.loads((tmp_path / "r.json").read_text())["stages"]
    assert [saved[k]["status"] for k in ("compiled", "next", "late")] == ["failed", "ok", "skipped"]


def test_efficiency_gpu_setting_is_detected_from_the_text(tmp_path, monkeypatch):
    fake = tmp_path / "efficiency.py"
    monkeypatch.setattr(gpu_benchmark, "HERE", tmp_path)
    fake.write_text('SETTINGS = {\n    "cpu": 1,\n}\n')
    assert not gpu_benchmark.efficiency_has_gpu_setting()
    fake.write_text('SETTINGS = {\n    "cpu": 1,\n    "gpu": Setting(),\n}\n')
    assert gpu_benchmark.efficiency_has_gpu_setting()
