"""Two gloo processes on CPU: gathered-target losses reproduce the single-process batch.

DetCon-B: each rank scores its own predictions against targets gathered without gradient.
DetCon-S: each rank's projections come from a DDP-wrapped model and the gathered projections
(with gradient) serve as targets. In both cases the mean of the per-rank losses must equal the
full-batch loss, and the gradients averaged over ranks (as DDP does) the full-batch gradients.
"""

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detcon import distributed
from detcon.losses import detcon_loss

WORLD, N, K, D, D_IN, NUM_IDS = 2, 6, 3, 5, 4, 3
B = N // WORLD


def _data():
    g = torch.Generator().manual_seed(1234)
    d = {f"p{v}": torch.randn(N, K, D, generator=g, dtype=torch.float64) for v in (1, 2)}
    d |= {f"t{v}": torch.randn(N, K, D, generator=g, dtype=torch.float64) for v in (1, 2)}
    d |= {f"id{v}": torch.randint(0, NUM_IDS, (N, K), generator=g) for v in (1, 2)}
    d["x"] = torch.randn(2, N, K, D_IN, generator=g, dtype=torch.float64)  # both views' inputs
    return d


def _model():
    torch.manual_seed(7)
    return nn.Linear(D_IN, D, dtype=torch.float64)


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        d, r = _data(), distributed.rank()
        local = slice(r * B, (r + 1) * B)
        id1, id2 = d["id1"][local], d["id2"][local]
        tid1, tid2 = distributed.all_gather(id1), distributed.all_gather(id2)
        res = {"ids_gathered": torch.equal(tid1, d["id1"]) and torch.equal(tid2, d["id2"])}

        # DetCon-B: local predictions, targets gathered without gradient.
        p1 = d["p1"][local].clone().requires_grad_()
        p2 = d["p2"][local].clone().requires_grad_()
        t1, t2 = distributed.all_gather(d["t1"][local]), distributed.all_gather(d["t2"][local])
        loss = detcon_loss(p1, p2, t1, t2, id1, id2, tid1, tid2, batch_offset=r * B)
        loss.backward()
        res |= {"loss_b": loss.detach(), "grad_p1": p1.grad, "grad_p2": p2.grad}

        # DetCon-S: one DDP forward on both views; gathered projections with gradient as targets.
        model = nn.parallel.DistributedDataParallel(_model())
        proj = model(d["x"][:, local])  # [2,B,K,D]
        proj.retain_grad()
        targets = distributed.all_gather(proj.transpose(0, 1), grad=True)  # [N,2,K,D]
        loss_s = detcon_loss(
            proj[0],
            proj[1],
            targets[:, 0],
            targets[:, 1],
            id1,
            id2,
            tid1,
            tid2,
            batch_offset=r * B,
            temperature=0.2,
        )
        loss_s.backward()
        res |= {"loss_s": loss_s.detach(), "grad_proj": proj.grad}
        res |= {"grad_w": model.module.weight.grad, "grad_b": model.module.bias.grad}
        torch.save(res, f"{out_dir}/rank{rank}.pt")
        del model  # release DDP's reducer (it holds the process group) before tearing down
        dist.barrier()  # no rank closes its connections while the other still uses them
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_gather_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(res["ids_gathered"] for res in ranks)
    d = _data()

    # DetCon-B reference: the whole batch on one process.
    p1, p2 = d["p1"].clone().requires_grad_(), d["p2"].clone().requires_grad_()
    ids = (d["id1"], d["id2"], d["id1"], d["id2"])
    full = detcon_loss(p1, p2, d["t1"], d["t2"], *ids)
    full.backward()
    assert full.item() > 0
    mean_loss = sum(res["loss_b"] for res in ranks) / WORLD
    torch.testing.assert_close(mean_loss, full.detach())
    for name, ref in (("grad_p1", p1.grad), ("grad_p2", p2.grad)):
        # Rank r's gradient of its own loss, averaged over ranks as DDP would (/ WORLD).
        torch.testing.assert_close(torch.cat([res[name] for res in ranks]) / WORLD, ref)

    # DetCon-S reference: one model, whole batch, targets are the projections themselves.
    model = _model()
    proj = model(d["x"])  # [2,N,K,D]
    proj.retain_grad()
    full_s = detcon_loss(proj[0], proj[1], proj[0], proj[1], *ids, temperature=0.2)
    full_s.backward()
    mean_s = sum(res["loss_s"] for res in ranks) / WORLD
    torch.testing.assert_close(mean_s, full_s.detach())
    grad_proj = torch.cat([res["grad_proj"] for res in ranks], dim=1) / WORLD  # [2,N,K,D]
    torch.testing.assert_close(grad_proj, proj.grad)
    for res in ranks:  # DDP already averaged the parameter gradients over ranks
        torch.testing.assert_close(res["grad_w"], model.weight.grad)
        torch.testing.assert_close(res["grad_b"], model.bias.grad)
    assert model.weight.grad.abs().sum() > 0
