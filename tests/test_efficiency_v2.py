"""The efficiency benchmark v2: batched views, object probes and the summary by hand, and the
whole path (``--dry-run``, toy size, CPU) end to end on a source pack made here."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import efficiency as eff  # noqa: E402
import object_probe as op  # noqa: E402
import scenes  # noqa: E402
import view_augment as va  # noqa: E402

from detcon.data.device_augment import batched_gaussian_blur  # noqa: E402
from detcon.data.photometric import gaussian_blur  # noqa: E402


# --------------------------------------------------------------------------- views
def test_crop_grid_picks_the_window_and_flips():
    # 8x8 map of 2x2 blocks with ids 0..15; the top-left half window at 4 px is the 4 blocks
    # there (nearest), and the flipped window is its mirror.
    blocks = torch.arange(16).reshape(4, 4)
    maps = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1)[None].float()  # [1, 8, 8]
    params = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.5, 0.5, 1.0]])
    grid = va.crop_grid(params, 4, "cpu")
    out = torch.nn.functional.grid_sample(
        maps[:, None].expand(2, 1, 8, 8), grid, mode="nearest", align_corners=False
    )[:, 0]
    want0 = blocks[:2, :2].repeat_interleave(2, 0).repeat_interleave(2, 1).float()
    want1 = blocks[2:, 2:].repeat_interleave(2, 0).repeat_interleave(2, 1).flip(-1).float()
    assert torch.equal(out[0], want0) and torch.equal(out[1], want1)


def test_crop_params_follow_the_official_window():
    p = va.crop_params(4000, torch.Generator().manual_seed(0))
    top, left, h, w, flip = p.unbind(1)
    assert (h <= 1).all() and (w <= 1).all() and (top >= 0).all() and (top + h <= 1 + 1e-6).all()
    assert (left + w <= 1 + 1e-6).all() and 0.45 < flip.mean() < 0.55
    area = h * w
    assert area.min() >= 0.08 * 0.99 and area.max() <= 1.0
    aspect = w / h  # unclipped windows keep their aspect in [3/4, 4/3]
    inside = (h < 1) & (w < 1)
    assert (aspect[inside] >= 0.75 - 1e-4).all() and (aspect[inside] <= 4 / 3 + 1e-4).all()


def test_batched_blur_equals_the_per_image_reference():
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 1.0, 1.9])
    got = batched_gaussian_blur(x, sigma, 20 / 10)  # what the benchmark's views use
    for i in range(3):
        ref = gaussian_blur(x[i], float(sigma[i]), 20 / 10)
        assert torch.allclose(got[i], ref, atol=1e-6)


def test_make_views_shapes_determinism_and_masks_follow_pixels():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (4, 32, 32, 3), generator=g, dtype=torch.uint8)
    maps = torch.zeros(4, 32, 32, dtype=torch.long)
    maps[:, :, 16:] = 7  # right half is region 7
    imgs[:, :, 16:] = 255  # and white; left half black
    imgs[:, :, :16] = 0
    a = va.make_views(imgs, maps, 16, torch.Generator().manual_seed(3), colour=False)
    b = va.make_views(imgs, maps, 16, torch.Generator().manual_seed(3), colour=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    va_, vb_, ma, mb = a
    assert va_.shape == (4, 3, 16, 16) and ma.shape == (4, 16, 16) and ma.dtype == torch.long
    assert set(ma.unique().tolist()) <= {0, 7}
    white = (va_[:, 0] * va.IMAGENET_STD[0] + va.IMAGENET_MEAN[0]) > 0.5  # [4, 16, 16]
    agree = (white == (ma == 7)).float().mean()
    assert agree > 0.95  # bilinear edges may differ from nearest labels by one column
    coloured = va.make_views(imgs, None, 16, torch.Generator().manual_seed(3))
    assert torch.equal(coloured[2], torch.zeros(4, 16, 16, dtype=torch.long))
    assert torch.isfinite(coloured[0]).all() and not torch.equal(coloured[0], va_)


# --------------------------------------------------------------------------- probes
def test_object_weights_and_pooled_features_by_hand():
    inst = torch.zeros(1, 4, 4, dtype=torch.uint8)
    inst[0, :2, :2] = 1  # top-left cell of a 2x2 grid, fully
    inst[0, 2:, :] = 2  # bottom row of cells
    w = op.object_weights(inst, (2, 2), 2)
    assert torch.allclose(w[0, 0], torch.tensor([[1.0, 0], [0, 0]]))
    assert torch.allclose(w[0, 1], torch.tensor([[0.0, 0], [1, 1]]))
    feats = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0 1 / 2 3, channel 1: 4 5 / 6 7
    vec, scene, obj = op.object_features(feats, inst, np.array([[3, 4]]), min_area=0.1)
    assert torch.allclose(vec, torch.tensor([[0.0, 4.0], [2.5, 6.5]]))
    assert scene.tolist() == [0, 0] and obj.tolist() == [0, 1]
    _, _, obj = op.object_features(feats, inst, np.array([[3, 4]]), min_area=0.3)
    assert obj.tolist() == [1]  # object 1 covers 1/4 < 0.3


def test_reid_accuracy_by_hand():
    vec = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [1.0, 1.0]]), dim=1
    )
    ident = torch.tensor([0, 1, 0, 0, 5])
    scene = torch.tensor([0, 0, 1, 1, 2])
    # obj0 -> nearest in other scenes is obj2 (id 0): hit; obj1 (id 1) has no other-scene twin:
    # skipped; obj2 -> obj0: hit; obj3 (id 0) -> nearest other-scene is obj1 (id 1): miss;
    # obj4 (id 5) has no twin: skipped.
    acc, n = op.reid_accuracy(vec, ident, scene)
    assert n == 3 and acc == pytest.approx(2 / 3)


def test_class_maps_and_fg_iou():
    inst = torch.tensor([[[0, 1], [2, 2]]], dtype=torch.uint8)
    assert op.class_maps(inst, np.array([[5, 3]])).tolist() == [[[0, 5], [3, 3]]]
    cm = torch.tensor([[50, 5, 5], [10, 20, 3], [2, 4, 1]])
    assert op.fg_iou(cm) == pytest.approx(28 / 50)


# --------------------------------------------------------------------------- summary
def test_steps_to_reach_and_mean_ci_by_hand():
    steps = [16, 32, 64]
    reach, kind = eff.steps_to_reach(steps, [0.1, 0.3, 0.5], 0.4)  # halfway in log2: 32*sqrt(2)
    assert kind == "interpolated" and reach == pytest.approx(32 * 2**0.5)
    assert eff.steps_to_reach(steps, [0.5, 0.6, 0.7], 0.4) == (16.0, "at most")
    assert eff.steps_to_reach(steps, [0.1, 0.2, 0.3], 0.4) == (None, "not reached")
    mu, half, n = eff.mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    assert (mu, n) == (2.0, 3) and half == pytest.approx(4.303 / math.sqrt(3))
    assert eff.mean_ci([0.5]) == (0.5, 0.0, 1)


def test_batch_indices_are_epoch_permutations_shared_by_arms():
    got = np.concatenate([eff.batch_indices(20, 6, seed=3, step=i) for i in range(3)])
    assert len(set(got.tolist())) == 18  # one epoch: drop-last, no repeats
    assert np.array_equal(eff.batch_indices(20, 6, 3, 4), eff.batch_indices(20, 6, 3, 4))
    assert not np.array_equal(eff.batch_indices(20, 6, 3, 0), eff.batch_indices(20, 6, 4, 0))


def _fake_results(s):
    """BYOL and one DetCon arm, 2 lrs on seed 0 and the best lr on seed 1."""
    recs = []
    for arm, base in (("BYOL", 0.30), ("DetCon_B (GT)", 0.40)):
        for lr in s.lrs:
            seeds = s.seeds if lr == s.lrs[1] else s.seeds[:1]
            for seed in seeds:
                bonus = 0.05 if lr == s.lrs[1] else 0.0
                evals = [
                    {
                        "step": st,
                        "seconds": float(st),
                        **{m: base + bonus + 0.1 * st / s.steps + 0.01 * seed for m in eff.METRICS},
                    }
                    for st in eff.budget_steps(s)
                ]
                recs.append({"arm": arm, "lr": lr, "seed": seed, "evals": evals})
    return recs


def _two_arm_setting(seeds):
    """BYOL and DetCon_B (GT), 64 steps, lrs 1 and 4 (1 shared): the shape _fake_results fills."""
    return eff.dataclasses.replace(
        eff.SETTINGS["cpu"],
        steps=64,
        seeds=seeds,
        lrs=(1.0, 4.0),
        shared_lr=1.0,
        arms=("BYOL", "DetCon_B (GT)"),
    )


def test_summary_best_lr_paired_difference_and_go():
    s = _two_arm_setting(seeds=(0, 1))
    floors = {sd: {m: 0.2 for m in eff.METRICS} for sd in s.seeds}
    summ = eff.summarise(s, _fake_results(s), floors)
    assert summ["best_lr"] == {"BYOL": 4.0, "DetCon_B (GT)": 4.0}
    d = summ["paired_vs_byol"]["DetCon_B (GT)"]["reid"]
    assert (
        d["mean"] == pytest.approx(0.10)
        and d["n"] == 2
        and d["ci95"] == pytest.approx(0.0, abs=1e-9)
    )
    # go: at the shared lr 1.0 the final BYOL reid is 0.30 + 0.1 = 0.40 >= 0.2 + 0.03
    assert summ["go_no_go"]["BYOL"]["go"] and summ["go_no_go"]["BYOL"]["margin"][
        "reid"
    ] == pytest.approx(0.2)
    # BYOL final (mean over seeds) 0.455; DetCon_B is 0.475 at 16 steps already: at most 1/4.
    r = summ["steps_to_byol"]["DetCon_B (GT)"]["reid"]
    assert r["kind"] == "at most" and r["fraction"] == pytest.approx(0.25)
    floors_high = {sd: {m: 0.9 for m in eff.METRICS} for sd in s.seeds}
    summ = eff.summarise(s, _fake_results(s), floors_high)
    assert not summ["go_no_go"]["BYOL"]["go"]
    assert summ["steps_to_byol"]["DetCon_B (GT)"]["reid"]["steps"] is None


def test_go_verdict_at_the_best_lr_gates_and_marks_the_comparisons():
    s = _two_arm_setting(seeds=(0, 1))
    # finals on seed 0: BYOL 0.40 at lr 1 (shared), 0.45 at lr 4 (best); DetCon_B 0.50 / 0.55.
    # A floor of 0.41 fails BYOL at the shared lr (margin -0.01) and passes it at its best lr
    # (+0.04); a floor of 0.43 fails it at the best lr too (+0.02 < 0.03).
    floors = {sd: {m: 0.41 for m in eff.METRICS} for sd in s.seeds}
    summ = eff.summarise(s, _fake_results(s), floors)
    assert not summ["go_no_go"]["BYOL"]["go"] and summ["go_no_go"]["BYOL"]["lr"] == 1.0
    best = summ["go_no_go_best"]["BYOL"]
    assert best["go"] and best["lr"] == 4.0 and best["margin"]["reid"] == pytest.approx(0.04)
    text = eff.report_text(s, "t", summ, None, None, 1.0, True)
    assert "every arm cleared the floor" in text and "(no-go)" not in text
    floors = {sd: {m: 0.43 for m in eff.METRICS} for sd in s.seeds}
    summ = eff.summarise(s, _fake_results(s), floors)
    assert not summ["go_no_go_best"]["BYOL"]["go"] and summ["go_no_go_best"]["DetCon_B (GT)"]["go"]
    text = eff.report_text(s, "t", summ, None, None, 1.0, True)
    assert "**no-go** for BYOL" in text
    assert "| BYOL (no-go) | 4 |" in text and "| DetCon_B (GT) | 4 |" in text
    # the appendix lists every evaluation of every run: BYOL lr 4 seed 1 at its last budget
    text = eff.report_text(s, "t", summ, None, None, 1.0, True, runs=_fake_results(s))
    rows = [r for r in text.splitlines() if r.startswith("| BYOL | 4 | 1 | 64 | 64 |")]
    assert len(rows) == 1 and rows[0].split(" | ")[6] == "46.0"  # 0.30 + 0.05 + 0.1 + 0.01


def test_work_folder_refuses_runs_of_another_setting(tmp_path):
    s = eff.SETTINGS["cpu"]
    eff.check_work_setting(tmp_path, s)
    eff.check_work_setting(tmp_path, s)  # same values: fine
    # scheduling fields may change: the finished runs stay valid
    eff.check_work_setting(tmp_path, eff.dataclasses.replace(s, seeds=(0,), lrs=(1.0, 3.0)))
    with pytest.raises(ValueError, match="differs in precision, steps"):
        eff.check_work_setting(tmp_path, eff.dataclasses.replace(s, steps=99, precision="fp32"))
    old = tmp_path / "old"
    (old / "runs" / "byol_lr8_s0").mkdir(parents=True)
    with pytest.raises(ValueError, match="no setting.json"):
        eff.check_work_setting(old, s)


def test_setting_overrides_and_plan():
    s, done = eff.apply_overrides(eff.SETTINGS["cpu"], ["steps=96", "shared_lr=2"])
    assert s.steps == 96 and s.shared_lr == 2.0 and done == [("steps", "96"), ("shared_lr", "2")]
    for bad in ("lr=3", "steps", "steps=1.5", "seeds=1"):
        with pytest.raises(ValueError, match="--set"):
            eff.apply_overrides(s, [bad])
    s = eff.SETTINGS["cpu"]
    assert eff.plan(s, {}, "pilot") == [(a, s.shared_lr, 0) for a in s.arms]
    sweep = eff.plan(s, {}, "sweep")
    assert len(sweep) == len(s.arms) * (len(s.lrs) - 1) and all(
        r[2] == 0 and r[1] != s.shared_lr for r in sweep
    )
    assert eff.plan(s, {"BYOL": 32.0}, "seeds") == [("BYOL", 32.0, 1), ("BYOL", 32.0, 2)]
    with pytest.raises(ValueError, match="stage"):
        eff.plan(s, {}, "all")


def test_step_loss_of_the_methods_without_target_and_with_masks():
    s = eff.toy(eff.SETTINGS["cpu"])
    g = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randint(0, 256, (4, 32, 32, 3), generator=g, dtype=torch.uint8),
        "maps": torch.randint(0, 3, (4, 32, 32), generator=g),
    }
    for method in ("detcon_s", "simclr"):
        net, target = eff.build_nets(s, method, 0, torch.device("cpu"))
        assert target is None and net.predictor is None
        loss = eff.step_loss(s, method, net, target, batch, 0, 0)
        loss.backward()
        assert torch.isfinite(loss) and net.backbone.conv1.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- sources + dry run
def _stamp(rng, cid, name, h=40, w=36):
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    rgba[..., 3] = np.where(
        ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1, 255, 0
    )
    return scenes.Stamp(name, cid, rgba)


def fake_sources(path: Path, monkeypatch) -> Path:
    rng = np.random.default_rng(0)
    stamps = [
        _stamp(rng, c, f"{scenes.CLASSES[c - 1]}/s{i}.png")
        for c in range(1, len(scenes.CLASSES) + 1)
        for i in range(3)
    ]
    bgs = [(f"bg{i}", rng.integers(0, 256, (50, 70, 3), np.uint8)) for i in range(4)]
    monkeypatch.setattr(scenes, "fetch_packages", lambda cache: path.parent)
    monkeypatch.setattr(scenes, "load_stamps", lambda root: stamps)
    monkeypatch.setattr(scenes, "load_backgrounds", lambda root: bgs)
    return scenes.build_sources(path)


def test_sources_pack_splits_backgrounds_and_scenes_are_deterministic(tmp_path, monkeypatch):
    src = scenes.load_sources(fake_sources(tmp_path / "sources.npz", monkeypatch))
    tr, vl = src["backgrounds"]["train"], src["backgrounds"]["val"]
    assert len(tr) == 3 and len(vl) == 1 and not {n for n, _ in tr} & {n for n, _ in vl}
    assert not {s.name for s in src["stamps"]["train"]} & {s.name for s in src["stamps"]["val"]}
    a = scenes.generate_arrays(src, "val", 5, 32, seed=0)
    b = scenes.generate_arrays(src, "val", 3, 32, seed=0)
    assert np.array_equal(a["images"][:3], b["images"]) and a["images"].dtype == np.uint8
    n_obj = (a["stamps"] >= 0).sum(1)
    assert ((n_obj >= 3) & (n_obj <= 6)).all()
    val_ids = {src["stamp_names"].index(s.name) for s in src["stamps"]["val"]}
    assert set(a["stamps"][a["stamps"] >= 0].tolist()) <= val_ids  # held-out objects only
    for i in range(5):  # instance ids 1..n match the per-instance labels
        assert a["inst"][i].max() == n_obj[i] and (a["classes"][i, : n_obj[i]] > 0).all()
    with pytest.raises(ValueError):
        scenes.generate_arrays(src, "test", 2, 32)


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, monkeypatch):
    sources = fake_sources(tmp_path / "src" / "sources.npz", monkeypatch)
    out = tmp_path / "out"
    args = [
        "--setting",
        "gpu",
        "--dry-run",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
        "--sources",
        str(sources),
        "--arms",
        "BYOL",
        "DetCon_B (GT)",
    ]
    assert eff.main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    s = eff.toy(eff.SETTINGS["gpu"])
    summ = doc["summary"]
    assert set(summ["best_lr"]) == {"BYOL", "DetCon_B (GT)"}
    assert len(doc["runs"]) == 2 * len(s.lrs) + 2 * (len(s.seeds) - 1)  # sweep + paired seeds
    fin = doc["runs"][0]["evals"][-1]
    assert fin["step"] == s.steps and set(eff.METRICS) <= set(fin)
    assert set(summ["paired_vs_byol"]) == {"DetCon_B (GT)"}
    lr = summ["best_lr"]["DetCon_B (GT)"]
    curve = [r for r in doc["runs"] if r["arm"] == "DetCon_B (GT)" and r["lr"] == lr]
    assert len(curve) == 2  # both seeds at the best lr, each evaluated at every budget
    assert all([e["step"] for e in r["evals"]] == eff.budget_steps(s) for r in curve)
    assert "Incomplete" not in (out / "report.md").read_text()
    for name in ("metrics_vs_steps.png", "metrics_vs_seconds.png"):
        assert (out / name).stat().st_size > 0
    # rerunning reuses every run (nothing retrained): the same results
    assert eff.main(args) == 0
    assert json.loads((out / "results.json").read_text())["runs"] == doc["runs"]


def test_a_pilot_alone_has_its_curves_at_the_shared_lr():
    s = _two_arm_setting(seeds=(0,))
    pilot = [r for r in _fake_results(s) if r["lr"] == 1.0 and r["seed"] == 0]
    summ = eff.summarise(s, pilot, {0: {m: 0.2 for m in eff.METRICS}})
    assert summ["best_lr"] == {} and summ["curves_lr"] == "shared"
    assert set(summ["curves"]) == {"BYOL", "DetCon_B (GT)"}
    # DetCon_B at 16 steps (0.40 + 0.025) is above BYOL's final 0.40: at most 1/4 of the run
    assert summ["steps_to_byol"]["DetCon_B (GT)"]["reid"]["kind"] == "at most"
    text = eff.report_text(s, "t", summ, None, None, 1.0, True)
    assert "## Each arm at the shared lr (pilot, no sweep)" in text
    # with a complete sweep the curves are at the best lr
    assert (
        eff.summarise(s, _fake_results(s), {0: {m: 0.2 for m in eff.METRICS}})["curves_lr"]
        == "best"
    )
