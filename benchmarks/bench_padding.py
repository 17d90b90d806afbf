"""Cost of TensorFlow 'SAME' padding (``padding="same"``) versus torchvision's (``"torch"``).

Times one forward + backward of the backbone alone (train mode, mean-square loss on the
features, gradients zeroed between steps) for each padding mode, with the same weights and
inputs. The two modes are interleaved step by step so machine load affects both alike; the
median of the timed steps is reported. Single thread by default (``--threads``).

    python benchmarks/bench_padding.py                      # resnet18@96 b32, resnet50@224 b8
    python benchmarks/bench_padding.py --cases resnet50:224:8 --steps 10 --json out.json
    python benchmarks/bench_padding.py --device cuda --threads 0 --cases resnet50:224:64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from detcon.fileio import atomic_write
from detcon.model.backbone import build_backbone

DEFAULT_CASES = ("resnet18:96:32", "resnet50:224:8")
MODES = ("torch", "same")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(net: torch.nn.Module, x: torch.Tensor):
    def step() -> None:
        net(x).square().mean().backward()
        net.zero_grad(set_to_none=True)

    return step


def bench_case(backbone: str, size: int, batch: int, args, device) -> dict:
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    nets = {m: build_backbone(backbone, padding=m).to(device, memory_format=fmt) for m in MODES}
    nets["same"].load_state_dict(nets["torch"].state_dict())
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device, memory_format=fmt)
    steps = {m: make_step(net, x) for m, net in nets.items()}
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times = {m: [] for m in MODES}
    for i in range(args.steps):
        for m in MODES if i % 2 == 0 else MODES[::-1]:
            sync(device)
            t0 = time.perf_counter()
            steps[m]()
            sync(device)
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) * 1e3 for m, v in times.items()}
    return {
        "backbone": backbone,
        "image_size": size,
        "batch": batch,
        "torch_ms": med["torch"],
        "same_ms": med["same"],
        "ratio": med["same"] / med["torch"],
        "torch_ms_all": [t * 1e3 for t in times["torch"]],
        "same_ms_all": [t * 1e3 for t in times["same"]],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--cases",
        nargs="+",
        default=list(DEFAULT_CASES),
        help="backbone:image_size:batch (default: %(default)s)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    p.add_argument("--steps", type=int, default=7, help="timed steps per mode")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", help="also write the result here (atomically)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases:
        name, size, batch = case.split(":")
        rows.append(bench_case(name, int(size), int(batch), args, device))
    print(
        f"{'backbone':<10} {'size':>5} {'batch':>6} {'torch ms':>10} {'same ms':>10} {'same/torch':>11}"
    )
    for r in rows:
        print(
            f"{r['backbone']:<10} {r['image_size']:>5} {r['batch']:>6} {r['torch_ms']:>10.1f}"
            f" {r['same_ms']:>10.1f} {r['ratio']:>11.3f}"
        )
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
        "warmup": args.warmup,
        "steps": args.steps,
        "torch_version": torch.__version__,
        "cases": rows,
    }
    if args.json:
        with atomic_write(args.json, "w") as f:  # temp file, then os.replace
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
