"""Step time of DetCon_B (K masks, FH-like region maps) versus BYOL (Grill et al.: global
average pooling, the regression loss, no negatives: ``loss.method=byol``).

Same backbone, batch, image size, heads and optimizer; the two steps are interleaved in ONE
run (alternating blocks) so machine load affects both alike. Each step is the training step
itself, :func:`detcon.step.train_step`: lr / tau schedules, mask reduction + id sampling,
online + target forward, loss, finite check, backward, LARS step, EMA update. Data are
synthetic tensors already on the device.

    python benchmarks/bench_step.py --backbone resnet18 --image-size 128 --batch 16   # CPU
    python benchmarks/bench_step.py --device cuda --backbone resnet50 --image-size 224 --batch 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from detcon.config import load_config, resolve
from detcon.fileio import atomic_write
from detcon.step import build_train_state, train_step


def fh_like_maps(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Voronoi region maps ``[B,S,S]`` int64 with 8-30 regions each (FH-like: irregular,
    many sizes). Ids are contiguous 0..n-1."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps = []
    for _ in range(batch):
        n = int(torch.randint(8, 31, (), generator=generator))
        seeds = torch.rand(n, 2, generator=generator) * size
        d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
        maps.append(d.argmin(0))
    return torch.stack(maps)


def make_step(method: str, args, device: torch.device):
    """A closure running one full training step; returns (step_fn, config)."""
    cfg = load_config(
        None,
        [
            f"loss.method={method}",
            f"model.backbone={args.backbone}",
            f"model.proj_hidden={args.proj_hidden}",
            f"model.pred_hidden={args.proj_hidden}",
            f"model.proj_dim={args.proj_dim}",
            f"data.image_size={args.image_size}",
            f"data.batch_size={args.batch}",
            f"train.precision={args.precision}",
            f"train.channels_last={args.channels_last}",
            f"model.padding={getattr(args, 'padding', 'same')}",
            f"train.compile={args.compile}",
            "train.probe=false",
            "train.steps=1000000",  # the schedules' position never reaches the end
        ]
        # byol fixes its own masks (whole image, K = 1)
        + ([f"masks.num_masks={args.num_masks}"] if method == "detcon_b" else []),
    )
    state = build_train_state(cfg, resolve(cfg, dataset_size=args.batch), device)
    for net in (state.online.net, state.target):  # heads on distinct (image, id) rows, or all
        if net is not None:
            net.distinct_heads = getattr(args, "heads", "distinct") == "distinct"
    g = torch.Generator().manual_seed(0)
    s, b = args.image_size, args.batch
    whole = method in ("byol", "simclr")
    batch = {
        **{v: torch.randn(b, 3, s, s, generator=g).to(device) for v in ("view_a", "view_b")},
        **{
            m: (torch.zeros(b, s, s, dtype=torch.long) if whole else fh_like_maps(b, s, g)).to(
                device
            )
            for m in ("mask_a", "mask_b")
        },
    }  # no "mask_u": the ids are drawn from the step's (seed, step, rank) generator

    def step(i: int) -> torch.Tensor:
        return train_step(state, iter([batch]), i).loss

    return step, cfg


def step_flops(step) -> int:
    """FLOPs of one full step (matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, i: int, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step. On a shared CPU machine the CPU time
    of this process is far less sensitive to other jobs than the wall time."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    step(i)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-masks", type=int, default=16)
    p.add_argument("--proj-hidden", type=int, default=4096, help="official 4096")
    p.add_argument("--proj-dim", type=int, default=256, help="official 256")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--padding", default="same", choices=["same", "torch"], help="official same")
    p.add_argument(
        "--heads",
        default="distinct",
        choices=["distinct", "all"],
        help="projector/predictor on distinct (image, id) rows (exact) or all B*K",
    )
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs, skip the timing")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.flops_only:
        args.warmup, args.rounds = 0, 0
    steps = {m: make_step(m, args, device)[0] for m in ("detcon_b", "byol")}
    for fn in steps.values():
        for i in range(args.warmup):
            fn(i)
    flops = {m: step_flops(fn) for m, fn in steps.items()}  # machine-independent cost
    times = {m: [] for m in steps}
    cpu = {m: [] for m in steps}
    for r in range(args.rounds):
        order = ("detcon_b", "byol") if r % 2 == 0 else ("byol", "detcon_b")
        for j in range(args.steps):  # alternate step by step, so slow drifts hit both alike
            for m in order:
                wall, proc = timed(steps[m], 100 + r * args.steps + j, device)
                times[m].append(wall)
                cpu[m].append(proc)
    med = {m: statistics.median(v) if v else float("nan") for m, v in times.items()}
    med_cpu = {m: statistics.median(v) if v else float("nan") for m, v in cpu.items()}
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch": args.batch,
        "num_masks": args.num_masks,
        "precision": args.precision,
        "padding": args.padding,
        "heads": args.heads,
        "byol": "Grill et al. regression loss on global features (loss.method=byol)",
        "proj_hidden": args.proj_hidden,
        "steps_per_method": len(times["byol"]),
        "detcon_b_s": med["detcon_b"],
        "byol_s": med["byol"],
        "ratio": med["detcon_b"] / med["byol"],
        "detcon_b_cpu_s": med_cpu["detcon_b"],
        "byol_cpu_s": med_cpu["byol"],
        "cpu_ratio": med_cpu["detcon_b"] / med_cpu["byol"],
        "detcon_b_gflop": flops["detcon_b"] / 1e9,
        "byol_gflop": flops["byol"] / 1e9,
        "flop_ratio": flops["detcon_b"] / flops["byol"],
    }
    head = f"{'method':<10} {'median step (s)':>16} {'CPU s/step':>11} {'images/s':>10} {'GFLOP/step':>11}"
    print(head)
    for m in ("detcon_b", "byol"):
        print(
            f"{m:<10} {med[m]:>16.4f} {med_cpu[m]:>11.4f} {args.batch / med[m]:>10.1f}"
            f" {flops[m] / 1e9:>11.1f}"
        )
    print(
        f"DetCon_B / BYOL step-time ratio: {result['ratio']:.3f} "
        f"({(result['ratio'] - 1) * 100:+.1f}%; target <= +5%); process CPU-time ratio "
        f"{result['cpu_ratio']:.3f}; FLOP ratio {result['flop_ratio']:.3f}"
    )
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
