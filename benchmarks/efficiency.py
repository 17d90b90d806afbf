"""Efficiency at equal compute: DetCon_B / DetCon_S versus BYOL / SimCLR, and the mask ablation.

Every method is pretrained with the same backbone, image size, batch, schedule, heads and seed
on the unlabelled split of the semi-synthetic scenes (``benchmarks/scenes.py``). Checkpoints at
1/8, 1/4, 1/2 and 1 of the total steps are evaluated with the frozen-backbone linear
segmentation probe of ``seg_probe.py`` (standardised features) on the val split, whose objects are
stamp files never seen in pretraining. Repeated over seeds. Outputs in ``--out``::

    results.json   every evaluation (method, masks, seed, step, seconds, mIoU) + summary
    table.md       mean +- std mIoU per budget, random-init floor, steps-to-BYOL ratio; the same
                   for the class-agnostic object IoU of the probe (objects found, class ignored)
    miou_vs_steps.png, miou_vs_seconds.png

Budgets are checkpoints of ONE cosine schedule, not separately scheduled runs as in the paper,
so early budgets still have a high learning rate for every method alike.
BYOL is Grill et al.'s BYOL (``loss.method=byol``: global features, the regression loss, no
negatives); SimCLR is DetCon_S with the whole-image mask (NT-Xent). The "whole image" row of the
mask ablation is DetCon_B's contrastive loss with one region per image, a run of its own.
Results recorded before this distinction (``benchmarks/results/efficiency_small``, ``_cpu``,
``_cpu_lr4x``) ran the contrastive whole-image loss under the name BYOL.
Rerunning the same command resumes: finished pretraining runs and evaluations are reused.

    python benchmarks/efficiency.py --setting cpu --out benchmarks/results/efficiency_cpu
    python benchmarks/efficiency.py --setting cpu --set base_lr=32 --seeds 0 --runs BYOL DetCon_B \
        --out /tmp/lr4x     # one field changed: its own work folder, nothing reused by mistake
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scenes  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """One benchmark size. Every method gets exactly these values."""

    scenes: tuple[int, int, int]  # (train, val, side) of the generated scenes
    image_size: int  # pretraining view side; feature grid = image_size // output_stride
    backbone: str
    batch_size: int
    steps: int  # total pretraining steps; budgets are fractions of it
    seeds: tuple[int, ...]
    heads: tuple[int, int, int]  # projector hidden, projection dim D, predictor hidden
    base_lr: float  # LARS lr per 256 images (peak = base_lr * batch / 256)
    ema_base: float
    warmup_epochs: int
    fh: tuple[float, int]  # FH (scale, min_size) on the scenes; sigma 0.8 (official)
    grid: int  # side g of the g x g spatial-grid masks
    probe: tuple[int, int, int]  # linear probe: train images, epochs, batch
    device: str
    precision: str
    workers: int
    threads: int  # torch intra-op threads per subprocess (0 = torch default)
    photometric: str = "official"  # colour ops of the views (data.photometric)
    output_stride: int = 32  # backbone stride in pretraining and in the probe (model.output_stride)


SETTINGS = {
    # 2 CPU cores: about 35-40 min per seed on a quiet machine (measured), 2 seeds.
    # 96 px views give a 3x3 feature grid (the backbone has stride 32): the smallest grid on
    # which masks can separate objects. Peak LARS lr 1.0 (base 8 at batch 32) instead of the
    # linearly scaled 0.025, which would move the weights by ~1% in a few hundred steps.
    # FH min_size: official 1000 px at ~400 px images, scaled by area to 128 px scenes.
    "small": Setting(
        scenes=(2000, 500, 128), image_size=96, backbone="resnet18", batch_size=32,
        steps=128, seeds=(0, 1), heads=(512, 128, 512), base_lr=8.0, ema_base=0.99,
        warmup_epochs=0, fh=(1000.0, 100), grid=4, probe=(1000, 20, 64),
        device="cpu", precision="fp32", workers=1, threads=2,
        photometric="torchvision",  # the recorded results were made with these colour ops
    ),
    # 2 CPU cores, the follow-up to `small`: the same scenes, views, batch and learning rate, but
    # layer4 dilated (output stride 16), so the 96 px views give a 6x6 feature grid (the paper's
    # 224 px views give 7x7) and the probe sees 8x8 features of the 128 px val scenes; 192
    # steps. About 1.5x the cost of a `small` step (measured 1.54 vs 1.11 s per batch-32
    # forward/backward on 2 threads).
    "cpu": Setting(
        scenes=(2000, 500, 128), image_size=96, backbone="resnet18", batch_size=32,
        steps=192, seeds=(0, 1), heads=(512, 128, 512), base_lr=8.0, ema_base=0.99,
        warmup_epochs=0, fh=(1000.0, 100), grid=4, probe=(1000, 20, 64),
        device="cpu", precision="fp32", workers=1, threads=2, output_stride=16,
    ),
    # Minutes: checks that the whole pipeline runs (numbers are meaningless).
    "smoke": Setting(
        scenes=(64, 24, 64), image_size=64, backbone="resnet18", batch_size=16,
        steps=8, seeds=(0,), heads=(64, 32, 64), base_lr=8.0, ema_base=0.99,
        warmup_epochs=0, fh=(1000.0, 25), grid=4, probe=(32, 2, 8),
        device="cpu", precision="fp32", workers=0, threads=2,
    ),
    # One GPU: 224 px views (7x7 grid, as the paper), ResNet-50, official heads.
    "gpu": Setting(
        scenes=(20000, 2000, 256), image_size=224, backbone="resnet50", batch_size=256,
        steps=4000, seeds=(0, 1, 2), heads=(4096, 256, 4096), base_lr=1.0, ema_base=0.99,
        warmup_epochs=2, fh=(1000.0, 400), grid=4, probe=(5000, 30, 64),
        device="cuda", precision="bf16", workers=8, threads=0,
    ),
}  # fmt: skip
# (name, method, masks); the order puts the headline comparison first.
RUNS = (
    ("BYOL", "byol", "whole"),
    ("DetCon_B", "detcon_b", "fh"),
    ("SimCLR", "simclr", "whole"),
    ("DetCon_S", "detcon_s", "fh"),
    ("DetCon_B (GT masks)", "detcon_b", "gt"),
    ("DetCon_B (grid masks)", "detcon_b", "grid"),
    ("DetCon_B (whole image)", "detcon_b", "whole"),
)
BUDGETS = (1 / 8, 1 / 4, 1 / 2, 1.0)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "detcon", *map(str, args)]


def _env(s: Setting) -> dict:
    env = dict(os.environ)
    if s.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(s.threads)
    return env


def _call(cmd: list[str], log: Path, s: Setting, dry: bool) -> None:
    """Run ``cmd`` with output appended to ``log``; raise with the log tail on failure."""
    print("$ " + " ".join(cmd), flush=True)
    if dry:
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(s))
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed (exit {rc}), log {log}:\n{tail}")


# --------------------------------------------------------------------------- data + masks
def prepare_data(s: Setting, data: Path, dry: bool) -> dict[str, str]:
    """Scenes, a probe-train split and the mask caches; returns ``{masks name: source}``."""
    n_train, n_val, side = s.scenes
    meta = data / "meta.json"
    want = {"size": side, "counts": {"train": {"images": n_train}, "val": {"images": n_val}}}
    have = json.loads(meta.read_text()) if meta.exists() else None
    ok = (
        have
        and have["size"] == side
        and all(
            have["counts"][k]["images"] == want["counts"][k]["images"] for k in ("train", "val")
        )
    )
    if not ok:
        print(f"generating scenes {s.scenes} into {data}")
        if not dry:
            scenes.generate(data, n_train, n_val, side, seed=0)
    split = data / "voc/ImageSets/Segmentation/probe_train.txt"
    if not dry:
        ids = (data / "voc/ImageSets/Segmentation/train.txt").read_text().split()[: s.probe[0]]
        split.write_text("".join(i + "\n" for i in ids))
    images, logs = data / "unlabelled/images", data / "logs"
    sources = {"whole": "whole"}
    for name, extra in (
        ("fh", ["--fh-scale", s.fh[0], "--fh-min-size", s.fh[1]]),
        ("grid", ["--grid", s.grid]),
        ("gt", ["--coco-json", data / "coco/annotations/instances_train.json"]),
    ):
        cache = data / "masks" / name
        method = "coco" if name == "gt" else name
        cmd = _cli("masks", images, "--out", cache, "--method", method, "--quiet", *extra)
        _call(cmd, logs / f"masks_{name}.log", s, dry)  # resumable: fresh entries are reused
        sources[name] = str(cache)
    return sources


# --------------------------------------------------------------------------- pretrain + eval
def budget_steps(s: Setting) -> list[int]:
    return [max(1, round(b * s.steps)) for b in BUDGETS]


def pretrain(s: Setting, method: str, masks: str, seed: int, run: Path, images: Path, dry: bool):
    """Pretrain one (method, masks, seed), keeping step_XXXXXXX.pt at every budget."""
    keep = math.gcd(*budget_steps(s))
    if all((run / f"step_{b:07d}.pt").exists() for b in budget_steps(s)):
        return
    ph, pd, qh = s.heads
    cmd = _cli(
        "pretrain", "--data", images, "--masks", masks, "--method", method,
        "--backbone", s.backbone, "--image-size", s.image_size, "--batch-size", s.batch_size,
        "--steps", s.steps, "--out", run, "--resume",
        f"train.seed={seed}", f"train.device={s.device}", f"train.precision={s.precision}",
        f"train.channels_last={s.device != 'cpu'}", f"train.keep_every={keep}",
        f"train.ckpt_every={keep}", "train.log_every=5", "train.progress=false",
        "data.repeat=1", f"data.num_workers={s.workers}",
        f"masks.num_masks={1 if masks == 'whole' else 16}",
        f"model.proj_hidden={ph}", f"model.proj_dim={pd}", f"model.pred_hidden={qh}",
        "optim.optimizer=lars", f"optim.base_lr={s.base_lr}", f"optim.ema_base={s.ema_base}",
        f"optim.warmup_epochs={s.warmup_epochs}", f"data.photometric={s.photometric}",
        f"model.output_stride={s.output_stride}",
    )  # fmt: skip
    _call(cmd, run / "pretrain.log", s, dry)
    if not dry:  # keep only the budget checkpoints (each holds online + target + optimizer)
        for ck in run.glob("step_*.pt"):
            if int(ck.stem.split("_")[1]) not in budget_steps(s):
                ck.unlink()


def loop_seconds(run: Path) -> dict[int, float]:
    """Cumulative training-loop seconds at each logged step, from ``metrics.jsonl``."""
    out, total, prev = {}, 0.0, 0
    path = run / "metrics.jsonl"
    if not path.exists():
        return out
    batch = None
    cfg = run / "config.yaml"
    if cfg.exists():
        import yaml

        batch = yaml.safe_load(cfg.read_text())["data"]["batch_size"]
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "images_per_s" not in rec or not batch:
            continue
        step = rec["step"]
        if step <= prev:  # a resumed run restarts its window; keep the first record
            prev = step
            continue
        total += (step - prev) * batch / max(rec["images_per_s"], 1e-9)
        out[step], prev = total, step
    return out


def evaluate(s: Setting, ckpt: Path | None, seed: int, data: Path, out: Path, dry: bool):
    """Linear segmentation probe on the val split; returns the result JSON (cached in ``out``).

    Uses ``seg_probe.py`` (standardised cached features) rather than ``detcon eval segment
    --mode linear``, whose unnormalised head diverged on pretrained features (see its
    docstring). ``probe = (train images, epochs, batch)``.
    """
    if out.exists():
        res = json.loads(out.read_text())
        if "object_iou" in res["metrics"]:
            return res
        out.unlink()  # made before the probe reported object IoU: evaluate again
    _, epochs, batch = s.probe
    src = ["--checkpoint", ckpt] if ckpt else ["--random", "--arch", s.backbone]
    cmd = [sys.executable, str(HERE / "seg_probe.py"), *map(str, [
        *src, "--data", data / "voc", "--out", out, "--epochs", epochs, "--batch-size", batch,
        "--num-classes", len(scenes.CLASSES) + 1, "--train-split", "probe_train",
        "--val-split", "val", "--seed", seed, "--output-stride", s.output_stride,
    ])]  # fmt: skip
    _call(cmd, out.with_suffix(".log"), s, dry)
    return None if dry else json.loads(out.read_text())


def miou_of(result: dict) -> float:
    m = result["metrics"]
    return float(m["miou"])


def object_iou_of(result: dict) -> float:
    return float(result["metrics"]["object_iou"])


# --------------------------------------------------------------------------- summary
def steps_to_reach(steps: list[int], miou: list[float], target: float) -> tuple[float | None, str]:
    """Pretraining steps at which the curve ``miou(steps)`` first reaches ``target``.

    Linear interpolation in log2(steps) between the two budgets that bracket the first
    crossing. Returns ``(steps, kind)`` with kind ``"interpolated"``, ``"at most"`` (already
    reached at the smallest budget, so the true value is <= that budget) or ``"not reached"``
    (steps None).
    """
    for i, (st, m) in enumerate(zip(steps, miou, strict=True)):
        if m >= target:
            if i == 0:
                return float(st), "at most"
            x0, x1, y0 = math.log2(steps[i - 1]), math.log2(st), miou[i - 1]
            frac = (target - y0) / (m - y0)
            return float(2 ** (x0 + frac * (x1 - x0))), "interpolated"
    return None, "not reached"


def _stats(rs: list[dict], key: str) -> tuple[float, float]:
    vals = [r[key] for r in rs]
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def summarise(
    records: list[dict], floor: list[float], s: Setting, floor_object: list[float] = ()
) -> dict:
    """Mean / std / n over seeds per (run, step) of mIoU (and of the class-agnostic object IoU
    when the records have it), and the DetCon_B-vs-BYOL step ratio on mIoU."""
    rows = {}
    for name, _, _ in RUNS:
        per_step = {}
        for r in records:
            if r["run"] == name:
                per_step.setdefault(r["step"], []).append(r)
        if not per_step:
            continue
        rows[name] = {}
        for st, rs in sorted(per_step.items()):
            cell = {"seeds": sorted(r["seed"] for r in rs),
                    "seconds_mean": float(np.mean([r["seconds"] for r in rs]))}  # fmt: skip
            cell["miou_mean"], cell["miou_std"] = _stats(rs, "miou")
            if all(r.get("object_iou") is not None for r in rs):
                cell["object_iou_mean"], cell["object_iou_std"] = _stats(rs, "object_iou")
            rows[name][str(st)] = cell
    out = {"rows": rows, "random_init": {"miou_mean": float(np.mean(floor)) if floor else None,
                                         "n": len(floor)}}  # fmt: skip
    if floor_object:
        out["random_init"]["object_iou_mean"] = float(np.mean(floor_object))
    byol, det = rows.get("BYOL", {}), rows.get("DetCon_B", {})
    final = str(s.steps)
    if final in byol and all(str(b) in det for b in budget_steps(s)):
        # Compare on the seeds both completed at every budget (means over those seeds).
        target = byol[final]["miou_mean"]
        curve = [det[str(b)]["miou_mean"] for b in budget_steps(s)]
        reach, kind = steps_to_reach(budget_steps(s), curve, target)
        if floor and target <= np.mean(floor):  # BYOL learned nothing: no speed-up to measure
            reach, kind = None, "undefined (BYOL final <= random init)"
        out["detcon_b_vs_byol"] = {
            "byol_final_miou": target, "byol_final_steps": s.steps, "detcon_b_steps": reach,
            "kind": kind, "speedup": None if reach is None else s.steps / reach,
        }  # fmt: skip
    return out


def _table(summary: dict, s: Setting, metric: str, title: str) -> list[str]:
    """Markdown rows of ``metric`` ("miou" / "object_iou"), mean ± std (n) per budget."""
    steps = budget_steps(s)
    lines = [title, "", "| method | masks | " + " | ".join(f"{b} steps" for b in steps) + " | loop s |",
             "|---|---|" + "---|" * (len(steps) + 1)]  # fmt: skip
    for run_name, _method, masks in RUNS:
        row = summary["rows"].get(run_name)
        if not row:
            continue
        cells = []
        for b in steps:
            c = row.get(str(b))
            cells.append("–" if c is None or f"{metric}_mean" not in c else
                         f"{100 * c[f'{metric}_mean']:.1f} ± {100 * c[f'{metric}_std']:.1f} ({len(c['seeds'])})")  # fmt: skip
        last = row.get(str(s.steps))
        secs = f"{last['seconds_mean']:.0f}" if last else "–"
        lines.append(f"| {run_name} | {masks} | " + " | ".join(cells) + f" | {secs} |")
    ri = summary["random_init"]
    if ri.get(f"{metric}_mean") is not None:
        lines.append(f"| random init | – | {100 * ri[f'{metric}_mean']:.1f} (floor, n={ri['n']}) |"
                     + " |" * len(steps))  # fmt: skip
    return lines


def write_report(
    out: Path, records: list[dict], floor: list[float], s: Setting, name: str,
    floor_object: list[float] = (),
):  # fmt: skip
    """results.json, table.md and the two plots, all rewritten atomically."""
    summary = summarise(records, floor, s, floor_object)
    doc = {"setting": name, "config": dataclasses.asdict(s), "evaluations": records,
           "random_init_evaluations": floor, "random_init_object_iou": list(floor_object),
           "summary": summary}  # fmt: skip
    scenes._save_atomic(
        lambda t: Path(t).write_text(json.dumps(doc, indent=1)), out / "results.json"
    )
    lines = _table(summary, s, "miou", "mIoU (%) of the linear segmentation probe, mean ± std "
                   f"over seeds (n), setting `{name}`")  # fmt: skip
    cmp = summary.get("detcon_b_vs_byol")
    if cmp:
        lines.append("")
        if cmp["kind"].startswith("undefined"):
            lines.append(f"BYOL's final mIoU is not above random init: speed-up {cmp['kind']}.")
        elif cmp["detcon_b_steps"] is None:
            lines.append(f"DetCon_B did not reach BYOL's final mIoU ({100 * cmp['byol_final_miou']:.1f}) "
                         "within the budgets: not reached.")  # fmt: skip
        else:
            lines.append(f"DetCon_B reaches BYOL's final mIoU ({100 * cmp['byol_final_miou']:.1f} at "
                         f"{cmp['byol_final_steps']} steps) after {cmp['kind']} {cmp['detcon_b_steps']:.0f} "
                         f"steps: {cmp['speedup']:.2f}x fewer steps"
                         + (" (a lower bound)" if cmp["kind"] == "at most" else "") + ".")  # fmt: skip
    if any("object_iou_mean" in c for row in summary["rows"].values() for c in row.values()):
        lines += [""] + _table(summary, s, "object_iou", "Class-agnostic object IoU (%) of the "
                               "same probe (any object class counts as object), mean ± std (n)")  # fmt: skip
    text = "\n".join(lines) + "\n"
    scenes._save_atomic(lambda t: Path(t).write_text(text), out / "table.md")
    plot(out, summary, s)
    return text


def plot(out: Path, summary: dict, s: Setting) -> None:
    """mIoU (and object IoU when measured) versus steps and versus loop seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("miou", "val mIoU (%)")]
    if any("object_iou_mean" in c for row in summary["rows"].values() for c in row.values()):
        metrics.append(("object_iou", "val object IoU (%)"))
    grid = s.image_size // s.output_stride
    for key, xlabel, fname in (("steps", "pretraining steps", "miou_vs_steps.png"),
                               ("seconds", "training-loop seconds", "miou_vs_seconds.png")):  # fmt: skip
        fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
        for ax, (metric, ylabel) in zip(axes[0], metrics, strict=True):
            for run_name, row in summary["rows"].items():
                pts = sorted((int(st), c) for st, c in row.items() if f"{metric}_mean" in c)
                x = [st if key == "steps" else c["seconds_mean"] for st, c in pts]
                y = [100 * c[f"{metric}_mean"] for _, c in pts]
                e = [100 * c[f"{metric}_std"] for _, c in pts]
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=run_name,
                            linestyle="--" if "masks" in run_name else "-")  # fmt: skip
            ri = summary["random_init"].get(f"{metric}_mean")
            if ri is not None:
                ax.axhline(100 * ri, color="grey", linestyle=":", label="random init")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(f"linear seg. probe, {s.backbone} {s.image_size}px ({grid}x{grid} grid)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        scenes._save_atomic(lambda t, f=fig: f.savefig(t, format="png", dpi=120), out / fname)
        plt.close(fig)


# --------------------------------------------------------------------------- main
def apply_overrides(s: Setting, items: list[str]) -> tuple[Setting, list[tuple[str, str]]]:
    """``["base_lr=32", ...]`` -> (new setting, [(field, value), ...]); scalar fields only."""
    fields = {f.name: f for f in dataclasses.fields(Setting)}
    scalar = {
        k: type(getattr(s, k)) for k in fields if isinstance(getattr(s, k), int | float | str)
    }
    changes, done = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in scalar:
            raise ValueError(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(scalar)}"
            )
        try:
            changes[key] = scalar[key](value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {value!r} is not a {scalar[key].__name__}") from None
        done.append((key, value))
    return dataclasses.replace(s, **changes), done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    p.add_argument("--out", type=Path, required=True, help="results folder (table, JSON, plots)")
    p.add_argument("--data", type=Path, default=None,
                   help="scenes + mask caches (default benchmarks/.cache/scenes_<train>_<val>_<side>, "
                        "shared by settings with the same scenes)")  # fmt: skip
    p.add_argument("--work", type=Path, default=None,
                   help="checkpoints and logs (default benchmarks/.cache/efficiency_<setting>[_<field>=<value>]/runs)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="*", help="override the setting's seeds")
    p.add_argument(
        "--runs", nargs="*", help="subset of run names (default all), e.g. BYOL DetCon_B"
    )
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one scalar field of the setting, e.g. --set base_lr=32 (repeatable); "
                        "runs then go to their own work folder")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    s = SETTINGS[args.setting]
    if args.seeds:
        s = dataclasses.replace(s, seeds=tuple(args.seeds))
    try:
        s, changed = apply_overrides(s, args.set)
    except ValueError as e:
        p.error(str(e))
    name = args.setting + "".join(f"_{k}={v}" for k, v in changed)
    data = args.data or HERE / ".cache" / "scenes_{}_{}_{}".format(*s.scenes)
    work = args.work or HERE / ".cache" / f"efficiency_{name}" / "runs"
    runs = [r for r in RUNS if not args.runs or r[0] in args.runs]
    if args.runs and len(runs) != len(args.runs):
        p.error(f"--runs: unknown name among {args.runs}; choose from {[r[0] for r in RUNS]}")
    dry = args.dry_run
    t0 = time.time()
    sources = prepare_data(s, data, dry)
    records, floor, floor_object = [], [], []
    for seed in s.seeds:  # seed-major: a partial run still has every method for seed 0
        res = evaluate(s, None, seed, data, work / "evals" / f"random_init_s{seed}.json", dry)
        if res:
            floor.append(miou_of(res))
            floor_object.append(object_iou_of(res))
        for run_name, method, masks in runs:
            run = work / f"{_slug(run_name)}_s{seed}"
            pretrain(s, method, sources[masks], seed, run, data / "unlabelled/images", dry)
            secs = loop_seconds(run)
            for b in budget_steps(s):
                ck = run / f"step_{b:07d}.pt"
                res = evaluate(s, ck, seed, data, work / "evals" / f"{run.name}_step{b}.json", dry)
                if res:
                    records.append({"run": run_name, "method": method, "masks": masks, "seed": seed,
                                    "step": b, "seconds": secs.get(b, float("nan")), "miou": miou_of(res),
                                    "object_iou": object_iou_of(res)})  # fmt: skip
            if not dry:
                text = write_report(args.out, records, floor, s, name, floor_object)
                print(f"[{time.time() - t0:.0f} s] {run_name} seed {seed} done\n{text}", flush=True)
    if dry:
        print(f"dry run: {len(s.seeds)} seeds x {len(runs)} runs x {len(BUDGETS)} budgets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
