"""Pretraining throughput on one GPU: DetCon_B ResNet-50, 224 px, bf16, channels_last.

Synthetic views and FH-like region maps live on the GPU (no data loading), so this measures
the training step alone: images/s, peak memory, and model FLOP utilisation (MFU) from the
FLOPs of one step counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward +
backward of online and target) against the chip's dense bf16 peak (H200: 989 TFLOP/s).

    python benchmarks/gpu_benchmark.py                        # H200, batch 256, a few minutes
    python benchmarks/gpu_benchmark.py --compile --json out.json
    python benchmarks/gpu_benchmark.py --device cpu --tiny    # check that it runs, no GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from detcon.fileio import atomic_write

sys.path.insert(0, str(Path(__file__).parent))
from bench_step import make_step, step_flops, sync, timed  # noqa: E402

H200_BF16_DENSE_TFLOPS = 989.0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="resnet18, 64 px, batch 8, small heads")
    p.add_argument(
        "--method", default="detcon_b", choices=["detcon_b", "byol", "detcon_s", "simclr"]
    )
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256, help="per-GPU batch")
    p.add_argument("--num-masks", type=int, default=16)
    p.add_argument("--proj-hidden", type=int, default=4096)
    p.add_argument("--proj-dim", type=int, default=256)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    if args.tiny:
        args.backbone, args.image_size, args.batch = "resnet18", 64, 8
        args.proj_hidden, args.proj_dim, args.num_masks = 256, 64, 8
        args.warmup, args.steps, args.precision = 1, 3, "fp32"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile_flag = args.compile
    args.compile = False
    eager, _ = make_step(args.method, args, device)
    flops = step_flops(eager)  # counted eagerly (FlopCounterMode does not see inside compile)
    step = eager
    if compile_flag:
        args.compile = True
        del eager
        step, _ = make_step(args.method, args, device)
    for i in range(args.warmup):
        step(1 + i)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed(step, 100 + i, device)[0] for i in range(args.steps)]  # wall seconds
    t = statistics.median(times)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    achieved = flops / t / 1e12
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "method": args.method,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch": args.batch,
        "num_masks": args.num_masks,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": compile_flag,
        "step_s": t,
        "images_per_s": args.batch / t,
        "peak_memory_gib": peak_mem,
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": achieved,
        "mfu": achieved / args.peak_tflops if device.type == "cuda" else None,
        "peak_tflops": args.peak_tflops,
        "timed_steps": args.steps,
    }
    rows = [
        ("device", result["device"]),
        (
            "config",
            f"{args.method} {args.backbone} {args.image_size}px batch {args.batch} "
            f"K={args.num_masks} {args.precision}"
            f"{' channels_last' if args.channels_last else ''}"
            f"{' compile' if compile_flag else ''}",
        ),
        ("median step", f"{t * 1000:.1f} ms"),
        ("images/s", f"{args.batch / t:.1f}"),
        ("peak memory", f"{peak_mem:.2f} GiB" if peak_mem is not None else "n/a (CPU)"),
        ("FLOPs / step", f"{flops / 1e12:.3f} TFLOP"),
        ("achieved", f"{achieved:.2f} TFLOP/s"),
        (
            "MFU",
            f"{result['mfu'] * 100:.1f}% of {args.peak_tflops:.0f} TFLOP/s"
            if result["mfu"] is not None
            else "n/a (CPU)",
        ),
    ]
    for k, v in rows:
        print(f"{k:<14} {v}")
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
