"""DetCon_B loss, forward + backward: the official computation against the distinct-region one.

Both compute the same value and gradients when rows sharing (image, id) are equal vectors, as
mask-pooled rows are (``tests/test_losses.py``). Inputs are built that way: one vector per
(image, region), K = 16 ids per view drawn with replacement among 3-7 regions per view (what FH
leaves on a 7x7 grid). One process (no gathering: N = B), targets without gradient (DetCon_B),
one torch thread by default. Each (method, B) runs in its own subprocess so that its peak
resident memory (``ru_maxrss``) is its own; the methods alternate per repetition.

When the ``lightly`` package is importable (never a dependency of ours: e.g.
``pip install --no-deps --target /tmp/lightly_pkg lightly`` and ``PYTHONPATH=/tmp/lightly_pkg``)
its ``DetConBLoss`` (no gathering) runs on the same inputs as a third arm.

    python benchmarks/bench_loss.py                         # B = 64, 256, 1024
    python benchmarks/bench_loss.py --batches 256 --reps 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("official", "distinct")


def have_lightly() -> bool:
    try:
        from lightly.loss import DetConBLoss  # noqa: F401
    except Exception:  # not installed, or an incompatible install
        return False
    return True


def case(B: int, K: int, D: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    regions = torch.randint(3, 8, (2, B), generator=g)  # regions per view and image
    ids = [
        (torch.rand(B, K, generator=g) * regions[v][:, None]).long() for v in range(2)
    ]  # [B, K] in [0, regions)
    bank = [torch.randn(B, 8, D, generator=g) for _ in range(4)]  # pred_a, pred_b, tgt_a, tgt_b

    def take(v, i):
        return v.gather(1, i[..., None].expand(-1, -1, D))

    preds = [take(bank[0], ids[0]).requires_grad_(), take(bank[1], ids[1]).requires_grad_()]
    targets = [take(bank[2], ids[0]), take(bank[3], ids[1])]
    return preds, targets, ids


def one(method: str, B: int, K: int, D: int, reps: int, threads: int) -> dict:
    """Run in a subprocess: median seconds of forward + backward, and peak RSS."""
    import torch

    from detcon.losses import detcon_loss

    torch.set_num_threads(threads)
    (p1, p2), (t1, t2), (i1, i2) = case(B, K, D)
    if method == "lightly":
        from lightly.loss import DetConBLoss

        lightly_loss = DetConBLoss(temperature=0.1, gather_distributed=False)
    times = []
    for _ in range(reps + 1):  # the first is a warmup
        t0 = time.perf_counter()
        if method == "lightly":
            loss = lightly_loss(p1, p2, t1, t2, i1, i2)
        else:
            loss = detcon_loss(p1, p2, t1, t2, i1, i2, i1, i2, distinct=method == "distinct")
        loss.backward()
        times.append(time.perf_counter() - t0)
        p1.grad = p2.grad = None
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": method,
        "B": B,
        "seconds": statistics.median(times[1:]),
        "rss_mb": rss_mb,
        "loss": float(loss),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--K", type=int, default=16)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per (method, B)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # internal: method B
    args = p.parse_args(argv)
    if args._one:
        method, B = args._one[0], int(args._one[1])
        print(json.dumps(one(method, B, args.K, args.D, args.reps, args.threads)))
        return []
    methods = METHODS + (("lightly",) if have_lightly() else ())
    if "lightly" not in methods:
        print("note: lightly is not importable; its arm is skipped")
    rows = []
    for B in args.batches:
        for method in methods:
            cmd = [
                sys.executable,
                __file__,
                "--_one",
                method,
                str(B),
                "--K",
                str(args.K),
                "--D",
                str(args.D),
                "--reps",
                str(args.reps),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"DetCon_B loss fwd+bwd, K={args.K}, D={args.D}, {args.threads} thread(s), 3-7 regions")
    print(
        f"{'B':>6} {'official s':>11} {'distinct s':>11} {'time ratio':>10} "
        f"{'official MB':>12} {'distinct MB':>12} {'|dloss|':>9}"
    )
    for B in args.batches:
        o, d = (next(r for r in rows if r["B"] == B and r["method"] == m) for m in METHODS)
        print(
            f"{B:>6} {o['seconds']:>11.4f} {d['seconds']:>11.4f} "
            f"{d['seconds'] / o['seconds']:>10.3f} {o['rss_mb']:>12.0f} {d['rss_mb']:>12.0f} "
            f"{abs(o['loss'] - d['loss']):>9.2e}"
        )
    if "lightly" in methods:
        print(
            f"{'B':>6} {'lightly s':>11} {'ours/lightly time':>18} {'lightly MB':>11} "
            f"{'ours/lightly MB':>16} {'|dloss|':>9}"
        )
        for B in args.batches:
            d, li = (
                next(r for r in rows if r["B"] == B and r["method"] == m)
                for m in ("distinct", "lightly")
            )
            print(
                f"{B:>6} {li['seconds']:>11.4f} {d['seconds'] / li['seconds']:>18.3f} "
                f"{li['rss_mb']:>11.0f} {d['rss_mb'] / li['rss_mb']:>16.3f} {abs(d['loss'] - li['loss']):>9.2e}"
            )
    # the official logits at the official scale: [B*K, 2*N*K] fp32 per view and process
    B, N, K = 4096 // 8, 4096, args.K
    print(
        f"official logits per process and view at global batch 4096 on 8 processes: "
        f"{B * K * 2 * N * K * 4 / 1e9:.1f} GB"
    )
    if args.json:
        from detcon.fileio import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump({"rows": rows, "K": args.K, "D": args.D, "threads": args.threads}, f)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
