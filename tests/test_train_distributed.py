"""Two-process gloo DDP on CPU: first-step loss (mean over ranks) and gradients (after DDP
averaging, SyncBN) equal one process on the whole batch, for DetCon_B and DetCon_S. In float64,
so the comparison is exact to rounding (float32 cross-process BN statistics alone, E[x^2] -
E[x]^2 as the official formula, differ by ~1e-5 of the gradient scale)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from tiny import without_masks

from detcon.config import load_config, resolve
from detcon.step import build_models, forward_loss

pytestmark = pytest.mark.slow  # two gloo processes each

B, S, K = 4, 64, 3  # global batch, image side, masks per view
METHODS = ("detcon_b", "detcon_s")
TINY = [
    "model.backbone=resnet18",
    "model.proj_hidden=32",
    "model.proj_dim=16",
    "model.pred_hidden=32",
    f"data.image_size={S}",
    f"data.batch_size={B}",
    f"masks.num_masks={K}",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.device=cpu",
]


def _inputs():
    """Fixed views, cell ids [B,2,2] and mask ids [B,K] (ids always present in the cells)."""
    g = torch.Generator().manual_seed(0)
    views = tuple(torch.randn(B, 3, S, S, generator=g) for _ in range(2))
    cells = tuple(torch.randint(0, 3, (B, 2, 2), generator=g) for _ in range(2))
    ids = tuple(c.flatten(1)[:, torch.randint(0, 4, (K,), generator=g)] for c in cells)
    return views, cells, ids


def _cfg(method):
    cfg = load_config(None, without_masks(TINY, method) + [f"loss.method={method}"])
    resolve(cfg, dataset_size=B, world_size=tdist.get_world_size() if tdist.is_initialized() else 1)
    return cfg


def _loss_and_grads(method, lo, hi):
    cfg = _cfg(method)
    online, target = build_models(cfg, torch.device("cpu"))
    online, target = online.double(), target.double() if target is not None else None
    model = online
    if tdist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(online)
    views, cells, ids = _inputs()
    views = tuple(v.double() for v in views)
    sl = lambda pair: tuple(x[lo:hi] for x in pair)  # noqa: E731
    loss, _, _ = forward_loss(model, target, sl(views), sl(cells), sl(ids), cfg)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in online.net.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        per, results = B // world, {}
        for method in METHODS:
            loss, grads = _loss_and_grads(method, rank * per, (rank + 1) * per)
            tdist.all_reduce(loss)
            results[method] = {"loss": loss / world, "grads": grads}
        if rank == 0:
            torch.save(results, out)
        tdist.barrier()  # no rank closes its connections while the other still uses them
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One two-process run (both methods) shared by the tests below."""
    out = tmp_path_factory.mktemp("ddp") / "ddp.pt"
    # fork: the children reuse the imported modules (spawn re-imports torch: ~10 s here)
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, start_method="fork")
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("method", METHODS)
def test_two_process_matches_full_batch(method, ddp_results):
    ddp = ddp_results[method]
    loss, grads = _loss_and_grads(method, 0, B)
    assert torch.allclose(ddp["loss"], loss, rtol=1e-10, atol=1e-12), (ddp["loss"], loss)
    assert set(ddp["grads"]) == set(grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
    # sums in a different order: compare against the overall gradient scale (biases that
    # feed a BN have a true gradient of 0, so a per-tensor relative error is noise over noise)
    scale = max(float(g.abs().max()) for g in grads.values())
    for name, g in grads.items():
        err = float((ddp["grads"][name] - g).abs().max()) / scale
        assert err < 1e-10, (name, err)
