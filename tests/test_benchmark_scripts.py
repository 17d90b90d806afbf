"""The step benchmark runs end to end on CPU at a toy size and writes its JSON (its numbers
are not checked here: speed targets live in benchmarks/, never in timed tests)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import bench_step  # noqa: E402


def test_bench_step_runs_on_cpu(tmp_path):
    out = tmp_path / "step.json"
    res = bench_step.main(
        [
            "--backbone",
            "resnet18",
            "--image-size",
            "64",
            "--batch",
            "2",
            "--proj-hidden",
            "64",
            "--proj-dim",
            "32",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["flop_ratio"] == res["flop_ratio"] > 1.0
    assert res["detcon_b_s"] > 0 and res["cpu_ratio"] > 0
