"""The GPU run in one command: DetCon_B against BYOL at ResNet-50, 224 px, bf16, channels_last,
eager and ``torch.compile``, on one GPU (written for an NVIDIA H200; needs no network).

Stages (each guarded: a failure is recorded and the next stage still runs; an overall time
budget skips what no longer fits and a watchdog ends the process at the budget, keeping the
results so far):

1. ``eager``: DetCon_B and BYOL steps interleaved step by step (:func:`bench_step.make_step`,
   i.e. :func:`detcon.step.train_step` on synthetic device-resident views and FH-like maps):
   median step time, images/s, FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``,
   matmuls and convolutions, forward + backward of online and target), achieved TFLOP/s and
   model-FLOP utilisation (MFU) against ``--peak-tflops`` (default 989: the H200's dense bf16
   tensor-core peak, NVIDIA's H200 SXM datasheet figure without sparsity);
2. ``loss_share``: the loss alone (forward + backward on the step's own inputs, captured from
   the step) against the full step, per method;
3. ``memory``: peak allocated memory of a step at the benchmark batch (256 per GPU), each
   method alone in memory;
4. ``device_augment``: :func:`detcon.data.device_augment.apply_photometric` on a batch of uint8
   views (both views of each item), from device-resident views and from a pinned host batch;
5. ``compiled``: stage 1 with ``torch.compile`` (online and target); FLOPs from stage 1;
6. ``efficiency_gpu`` (optional): ``python benchmarks/efficiency.py --setting gpu`` in what is
   left of the budget, when that setting exists (else skipped with a message).

Writes ``--out`` (JSON, rewritten atomically after every stage) and prints a table::

    python benchmarks/gpu_benchmark.py --out benchmarks/results/gpu_h200.json      # ~8 min
    python benchmarks/gpu_benchmark.py --dry-run --out /tmp/gpu_dry.json           # CPU, toy
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

_STARTED = time.monotonic()  # the budget counts from process start, imports included

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_step import make_step, step_flops, sync, timed  # noqa: E402

from detcon.fileio import atomic_write  # noqa: E402

#: NVIDIA H200 SXM dense BF16 tensor-core peak, TFLOP/s (datasheet: 1,979 with sparsity).
H200_BF16_DENSE_TFLOPS = 989.0
#: The goals for one H200 (issue: DetCon_B at >= 40% MFU and within 5% of BYOL's step time).
GOAL_MFU, GOAL_RATIO = 0.40, 1.05
METHODS = ("detcon_b", "byol")


class Budget:
    """Seconds left until the deadline; stages ask before they start."""

    def __init__(self, seconds: float, start: float | None = None):
        self.start = time.monotonic() if start is None else start
        self.seconds = float(seconds)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Report:
    """Results by stage, written to ``path`` after every change (temp file + rename)."""

    def __init__(self, path: Path | None, meta: dict):
        self.path, self.data, self.lock = path, {"meta": meta, "stages": {}}, threading.Lock()

    def set(self, stage: str, entry: dict) -> None:
        with self.lock:
            self.data["stages"][stage] = entry
            self.write()

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "w") as f:
            json.dump(self.data, f, indent=1, default=str)


def run_stage(report: Report, budget: Budget, name: str, needs_s: float, fn, *args) -> dict:
    """Run ``fn(*args) -> dict`` as stage ``name`` if ``needs_s`` seconds are left; record
    ``ok`` / ``failed`` (with the error and the traceback's tail) / ``skipped``."""
    if budget.left() < needs_s:
        entry = {
            "status": "skipped",
            "reason": f"{budget.left():.0f} s left, needs ~{needs_s:.0f} s",
        }
        report.set(name, entry)
        print(f"[{budget.elapsed():6.1f}s] {name}: skipped ({entry['reason']})", flush=True)
        return entry
    print(f"[{budget.elapsed():6.1f}s] {name} ...", flush=True)
    start = time.monotonic()
    try:
        entry = {"status": "ok", **fn(*args)}
    except Exception as err:  # noqa: BLE001 - one failing stage must not stop the others
        tb = traceback.format_exc().strip().splitlines()[-6:]
        entry = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": tb}
        prior = report.data["stages"].get(name, {})
        if prior.get("status") == "partial":  # what the stage measured before it failed
            entry["partial_result"] = {k: v for k, v in prior.items() if k != "status"}
        print(f"  {name} FAILED: {entry['error']}", flush=True)
    entry["seconds"] = round(time.monotonic() - start, 1)
    report.set(name, entry)
    free_memory()
    return entry


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def step_args(args, compile_: bool, method: str) -> argparse.Namespace:
    """The argument namespace :func:`bench_step.make_step` reads (BYOL: one whole-image
    region, ``masks.num_masks=1``)."""
    return argparse.Namespace(
        backbone=args.backbone,
        proj_hidden=args.proj_hidden,
        proj_dim=args.proj_dim,
        image_size=args.image_size,
        batch=args.batch,
        num_masks=1 if method == "byol" else args.num_masks,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=compile_,
        padding="same",
        heads="distinct",
    )


def interleaved(steps: dict, device, warmup: int, timed_steps: int, budget: Budget, reserve: float):
    """Warm each step up, then time them alternately step by step (ABAB, the order flipping
    every round); stops early, keeping at least 3 samples each, when the budget runs low."""
    for fn in steps.values():
        for i in range(warmup):
            fn(1 + i)
    sync(device)
    times: dict[str, list[float]] = {m: [] for m in steps}
    for j in range(timed_steps):
        order = list(steps) if j % 2 == 0 else list(steps)[::-1]
        for m in order:
            times[m].append(timed(steps[m], 100 + j, device)[0])
        if j >= 2 and budget.left() < reserve:
            break
    return times


def summarise(times, flops, args, device) -> dict:
    out = {}
    for m, ts in times.items():
        t = statistics.median(ts)
        achieved = flops[m] / t / 1e12 if m in flops else None
        out[m] = {
            "median_step_ms": t * 1e3,
            "images_per_s": args.batch / t,
            "timed_steps": len(ts),
            "tflop_per_step": flops.get(m, 0) / 1e12 if m in flops else None,
            "achieved_tflops": achieved,
            "mfu": achieved / args.peak_tflops if achieved and device.type == "cuda" else None,
        }
    if all(m in out for m in METHODS):
        ratio = out["detcon_b"]["median_step_ms"] / out["byol"]["median_step_ms"]
        out["detcon_b_over_byol"] = ratio
        mfu = out["detcon_b"]["mfu"]
        out["goals"] = {
            "ratio_le_1.05": ratio <= GOAL_RATIO,
            "detcon_b_mfu_ge_0.40": None
            if mfu is None or device.type != "cuda"
            else mfu >= GOAL_MFU,
        }
    return out


# ---- stages


def stage_eager(args, device, budget: Budget, shared: dict) -> dict:
    steps = {m: make_step(m, step_args(args, False, m), device)[0] for m in METHODS}
    for fn in steps.values():  # one warm-up step before counting (lazy init, cudnn autotune)
        fn(0)
    flops = {m: step_flops(fn) for m, fn in steps.items()}
    shared["flops"] = flops
    times = interleaved(steps, device, args.warmup, args.steps, budget, args.reserve_s)
    shared["eager_ms"] = {m: statistics.median(t) * 1e3 for m, t in times.items()}
    return summarise(times, flops, args, device)


class _Capture:
    """Wraps a loss function of :mod:`detcon.step` and keeps the inputs of its first call."""

    def __init__(self, fn):
        self.fn, self.args, self.kwargs = fn, None, None

    def __call__(self, *args, **kwargs):
        if self.args is None:
            self.args = [
                a.detach().clone().requires_grad_(a.requires_grad) if torch.is_tensor(a) else a
                for a in args
            ]
            self.kwargs = dict(kwargs)
        return self.fn(*args, **kwargs)


def stage_loss_share(args, device, budget: Budget, shared: dict) -> dict:
    import detcon.step as step_module

    out = {}
    for m in METHODS:
        name = "byol_loss" if m == "byol" else "detcon_loss"
        original = getattr(step_module, name)
        capture = _Capture(original)
        setattr(step_module, name, capture)
        try:
            fn, cfg = make_step(m, step_args(args, False, m), device)
            fn(0)  # the step that captures the loss inputs
            step_ms = shared.get("eager_ms", {}).get(m)
            if step_ms is None:  # the eager stage failed: time this step here
                step_ms = statistics.median(timed(fn, 10 + i, device)[0] for i in range(3)) * 1e3
        finally:
            setattr(step_module, name, original)
        del fn
        loss_args, kwargs = capture.args, capture.kwargs

        def loss_step(fn=original, inputs=loss_args, kw=kwargs, cfg=cfg):
            with step_module.autocast_for(cfg, device):
                loss = fn(*inputs, **kw)
            loss.backward()
            for a in inputs:
                if torch.is_tensor(a):
                    a.grad = None

        for _ in range(args.warmup):
            loss_step()
        sync(device)
        ts = []
        for _ in range(max(5, args.steps)):
            sync(device)
            t0 = time.perf_counter()
            loss_step()
            sync(device)
            ts.append(time.perf_counter() - t0)
        loss_ms = statistics.median(ts) * 1e3
        shapes = [tuple(a.shape) for a in loss_args if torch.is_tensor(a)]
        out[m] = {
            "loss_fwd_bwd_ms": loss_ms,
            "step_ms": step_ms,
            "share": loss_ms / step_ms,
            "input_shapes": shapes,
        }
        free_memory()
    return out


def stage_memory(args, device, budget: Budget, shared: dict) -> dict:
    if device.type != "cuda":
        return {"note": "peak memory is measured on CUDA only"}
    out = {}
    for m in METHODS:
        free_memory()
        torch.cuda.reset_peak_memory_stats(device)
        fn, _ = make_step(m, step_args(args, False, m), device)
        for i in range(3):
            fn(i)
        sync(device)
        out[m] = {
            "batch": args.batch,
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
        del fn
    out["total_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return out


def augment_inputs(batch: int, size: int, seed: int = 0):
    """uint8 views ``[B, 3, S, S]`` x 2 (smooth random colour fields) and their drawn official
    parameters ``[B, NUM_PARAMS]`` x 2 (view a: blur 1.0, solarize 0; view b: 0.1, 0.2)."""
    from detcon.data.photometric import OfficialPhotometric

    g = torch.Generator().manual_seed(seed)
    views, params = [], []
    for blur_p, sol_p in ((1.0, 0.0), (0.1, 0.2)):
        x = torch.rand(batch, 3, 8, 8, generator=g)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
        views.append((x * 255).round().to(torch.uint8))
        photo = OfficialPhotometric(blur_p, sol_p)
        params.append(torch.stack([photo.draw(g) for _ in range(batch)]))
    return views, params


def stage_device_augment(args, device, budget: Budget, shared: dict) -> dict:
    from detcon.data.device_augment import apply_photometric, augment_on_device

    views, params = augment_inputs(args.aug_batch, args.image_size)
    on_device = [v.to(device) for v in views]

    def apply_only():
        for v, p in zip(on_device, params, strict=True):
            apply_photometric(v, p)

    pin = device.type == "cuda"
    host = {
        "view_a": views[0].pin_memory() if pin else views[0],
        "view_b": views[1].pin_memory() if pin else views[1],
        "photo_a": params[0],
        "photo_b": params[1],
    }

    def from_host():
        augment_on_device(host, device, channels_last=args.channels_last)

    out = {"batch": args.aug_batch, "image_size": args.image_size, "views_per_item": 2}
    for name, fn in (("apply_on_device", apply_only), ("from_pinned_host_batch", from_host)):
        for _ in range(args.warmup):
            fn()
        ts = [timed(lambda _i, f=fn: f(), 0, device)[0] for _ in range(max(5, args.steps))]
        t = statistics.median(ts)
        out[name] = {
            "batch_ms": t * 1e3,
            "ms_per_item": t * 1e3 / args.aug_batch,
            "items_per_s": args.aug_batch / t,
        }
    step_ms = shared.get("eager_ms", {}).get("detcon_b")
    if step_ms:  # per item at the step's batch, as a fraction of the eager DetCon_B step
        per_step = out["from_pinned_host_batch"]["ms_per_item"] * args.batch
        out["share_of_detcon_b_eager_step"] = per_step / step_ms
    return out


def stage_compiled(args, device, budget: Budget, shared: dict) -> dict:
    """Compile and warm up DetCon_B, time it alone (kept if BYOL's compile does not fit),
    then compile BYOL and time the two interleaved."""
    steps, compile_s, out = {}, {}, {}
    report: Report | None = shared.get("report")
    for m in METHODS:
        t0 = time.monotonic()
        fn = make_step(m, step_args(args, True, m), device)[0]
        for i in range(args.compile_warmup):
            fn(1 + i)
        sync(device)
        steps[m], compile_s[m] = fn, time.monotonic() - t0
        if m == METHODS[0]:  # a first result on its own, written before the next compile
            alone = interleaved({m: fn}, device, 0, args.steps, budget, args.reserve_s)
            out = summarise(alone, shared.get("flops", {}), args, device)
            out["note"] = f"{m} timed alone; BYOL's compile had not finished"
            if report is not None:
                report.set(
                    "compiled", {"status": "partial", **out, "compile_and_warmup_s": compile_s}
                )
    times = interleaved(steps, device, 1, args.steps, budget, args.reserve_s)
    out = summarise(times, shared.get("flops", {}), args, device)
    out["compile_and_warmup_s"] = compile_s
    return out


def efficiency_has_gpu_setting() -> bool:
    """Whether benchmarks/efficiency.py defines a ``"gpu"`` entry in its SETTINGS (read as
    text; the script is not imported or run)."""
    path = HERE / "efficiency.py"
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    start = text.find("SETTINGS = {")
    return start >= 0 and re.search(r'^\s*"gpu"\s*:', text[start:], re.MULTILINE) is not None


def stage_efficiency(args, device, budget: Budget, shared: dict) -> dict:
    out_dir = (args.out.parent if args.out else HERE / "results") / "efficiency_v2_gpu"
    cmd = [sys.executable, str(HERE / "efficiency.py"), "--setting", "gpu", "--out", str(out_dir)]
    shown = " ".join(
        ["python", "benchmarks/efficiency.py", "--setting", "gpu", "--out", str(out_dir)]
    )
    if not efficiency_has_gpu_setting():
        return {"ran": False, "reason": "benchmarks/efficiency.py has no 'gpu' setting"}
    if args.dry_run or device.type != "cuda":
        return {"ran": False, "reason": "not run in a dry run (needs the GPU)", "command": shown}
    limit = budget.left() - args.reserve_s
    try:
        proc = subprocess.run(cmd, timeout=limit, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {
            "ran": False,
            "reason": f"did not fit in {limit:.0f} s: run it separately",
            "command": shown,
        }
    return {
        "ran": True,
        "returncode": proc.returncode,
        "command": shown,
        "output_tail": (proc.stdout + proc.stderr)[-3000:],
    }


# ---- table


def _fmt(v, spec=".1f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def table(data: dict) -> str:
    st, meta = data["stages"], data["meta"]
    lines = [
        f"device: {meta['device']}; {meta['config']}; peak {meta['peak_tflops']:.0f} TFLOP/s",
        f"{'stage / method':<28} {'step ms':>9} {'img/s':>9} {'TFLOP/step':>11} {'TFLOP/s':>9} {'MFU':>7}",
    ]
    for stage in ("eager", "compiled"):
        e = st.get(stage, {})
        if e.get("status") != "ok":
            lines.append(
                f"{stage:<28} {e.get('status', 'not run')}: {e.get('error') or e.get('reason', '')}"
            )
            continue
        for m in METHODS:
            r = e[m]
            mfu = None if r["mfu"] is None else r["mfu"] * 100
            lines.append(
                f"{stage + ' ' + m:<28} {r['median_step_ms']:>9.1f} {r['images_per_s']:>9.1f} "
                f"{_fmt(r['tflop_per_step'], '.3f'):>11} {_fmt(r['achieved_tflops']):>9} "
                f"{_fmt(mfu, '.1f', '%'):>7}"
            )
        ratio = e.get("detcon_b_over_byol")
        lines.append(
            f"  DetCon_B / BYOL step time: {_fmt(ratio, '.3f')} (goal <= {GOAL_RATIO}); goals: {e.get('goals')}"
        )
    e = st.get("loss_share", {})
    if e.get("status") == "ok":
        for m in METHODS:
            r = e[m]
            lines.append(
                f"loss share {m:<17} {r['loss_fwd_bwd_ms']:.2f} ms of {r['step_ms']:.1f} ms = {r['share'] * 100:.1f}%"
            )
    e = st.get("memory", {})
    if e.get("status") == "ok" and "detcon_b" in e:
        for m in METHODS:
            lines.append(
                f"peak memory {m:<16} {e[m]['peak_allocated_gib']:.2f} GiB at batch {e[m]['batch']}"
            )
    e = st.get("device_augment", {})
    if e.get("status") == "ok":
        for k in ("apply_on_device", "from_pinned_host_batch"):
            r = e[k]
            lines.append(
                f"device augment {k:<13} {r['ms_per_item']:.3f} ms/item, {r['items_per_s']:.0f} items/s (2 views, batch {e['batch']})"
            )
    for name, e in st.items():
        if e.get("status") in ("failed", "skipped") and name not in ("eager", "compiled"):
            lines.append(f"{name}: {e['status']}: {e.get('error') or e.get('reason')}")
    e = st.get("efficiency_gpu", {})
    if e.get("status") == "ok":
        lines.append(
            f"efficiency gpu: {'ran, rc=' + str(e.get('returncode')) if e.get('ran') else e.get('reason')}"
        )
    return "\n".join(lines)


# ---- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu_h200.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="the whole path at toy size on the CPU")
    p.add_argument(
        "--budget-s",
        type=float,
        default=440.0,
        help="overall budget from process start (8 min cap)",
    )
    p.add_argument("--reserve-s", type=float, default=20.0, help="kept for the final write")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256, help="per-GPU batch")
    p.add_argument("--num-masks", type=int, default=16)
    p.add_argument("--proj-hidden", type=int, default=4096)
    p.add_argument("--proj-dim", type=int, default=256)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile-warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--aug-batch", type=int, default=256)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--skip", nargs="*", default=[], help="stage names to leave out")
    args = p.parse_args(argv)
    if args.dry_run:  # toy size on the CPU; torch.compile traced with the eager backend
        args.device, args.backbone, args.image_size, args.batch = "cpu", "resnet18", 32, 4
        args.num_masks, args.proj_hidden, args.proj_dim, args.precision = 4, 64, 32, "fp32"
        args.warmup, args.compile_warmup, args.steps, args.aug_batch = 1, 1, 2, 8
        args.budget_s = min(args.budget_s, 120.0)
        args.reserve_s = min(args.reserve_s, 5.0)
        args.threads = args.threads or 1  # toy tensors: extra threads only contend
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available; use --dry-run to check the path on the CPU")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    budget = Budget(args.budget_s, start=_STARTED if argv is None else None)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dry_run": args.dry_run,
        "config": (
            f"{args.backbone} {args.image_size}px batch {args.batch} K={args.num_masks} "
            f"{args.precision}{' channels_last' if args.channels_last else ''}"
        ),
        "peak_tflops": args.peak_tflops,
        "peak_note": "H200 SXM dense BF16 tensor-core peak (no sparsity)",
        "budget_s": args.budget_s,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    report = Report(args.out, meta)

    def watchdog():  # the budget is a promise: end the process, keeping what was measured
        report.data["meta"]["watchdog"] = f"stopped at {budget.elapsed():.0f} s"
        with contextlib.suppress(Exception):
            report.write()
        print(f"time budget of {args.budget_s:.0f} s reached: stopping", flush=True)
        os._exit(3)

    timer = threading.Timer(max(1.0, budget.left() + args.reserve_s), watchdog)
    timer.daemon = True
    timer.start()
    compile_patch = contextlib.nullcontext()
    if args.dry_run:  # trace with dynamo but skip inductor's C++ build (CPU-only machines)
        compile_patch = _patched_compile(functools.partial(torch.compile, backend="eager"))
    shared: dict = {"report": report}
    stages = [
        ("eager", 60, stage_eager),
        ("loss_share", 20, stage_loss_share),
        ("memory", 20, stage_memory),
        ("device_augment", 10, stage_device_augment),
        ("compiled", 150, stage_compiled),
        ("efficiency_gpu", 60, stage_efficiency),
    ]
    needs_scale = 0.1 if args.dry_run else 1.0
    try:
        with compile_patch:
            for name, needs, fn in stages:
                if name in args.skip:
                    report.set(name, {"status": "skipped", "reason": "--skip"})
                    continue
                run_stage(
                    report, budget, name, needs * needs_scale, fn, args, device, budget, shared
                )
    finally:
        timer.cancel()
        torch.set_num_threads(threads)
    report.data["meta"]["total_s"] = round(budget.elapsed(), 1)
    report.write()
    print(table(report.data))
    if args.out:
        print(f"wrote {args.out}")
    return report.data


@contextlib.contextmanager
def _patched_compile(fn):
    original = torch.compile
    torch.compile = fn
    try:
        yield
    finally:
        torch.compile = original


if __name__ == "__main__":
    main()
