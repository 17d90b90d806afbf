"""P processes equal one: a 5-step DetCon_B run (FH-like region maps, several regions per view)
on two gloo processes gives the losses and weights of one process on the same global batch.

Every random draw of a step is a function of (seed, image): augmentations by the item seed,
mask ids by the item's ``mask_u`` uniforms, the data order by the sampler (rank r reads every
P-th image of one permutation, so each step's global batch is the same set of images).
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tiny import TINY_TRAIN

from detcon import checkpoint
from detcon.config import load_config

pytestmark = pytest.mark.slow  # two gloo processes each

STEPS = 5
OVERRIDES = TINY_TRAIN + [
    "data.data=synthetic:16",  # blocky maps of 2-12 regions, like FH on real photographs
    "data.batch_size=8",
    "loss.method=detcon_b",
    "masks.num_masks=4",
    f"train.steps={STEPS}",
    "optim.warmup_epochs=0",
    "optim.base_lr=2.0",  # large steps, so a difference in the draws shows in the weights
    "train.ckpt_every=100",
]


def _cfg(out):
    return load_config(None, OVERRIDES + [f"train.out={out}"])


def _worker(rank, world, port, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    from detcon import distributed
    from detcon.train import train

    try:
        train(_cfg(out))
    finally:
        distributed.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _relative_distance(a: dict, b: dict) -> float:
    keys = [k for k, v in a.items() if v.is_floating_point()]
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys)
    norm = sum(float(a[k].double().square().sum()) for k in keys)
    return (diff / norm) ** 0.5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from detcon.train import train

    root = tmp_path_factory.mktemp("p_equals_one")
    one, two = root / "one", root / "two"
    train(_cfg(one))
    mp.start_processes(_worker, args=(2, _free_port(), str(two)), nprocs=2, start_method="fork")
    return one, two


def test_two_processes_give_the_losses_and_weights_of_one(runs):
    one, two = runs
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == STEPS
    for a, b in zip(l1, l2, strict=True):
        assert a == pytest.approx(b, rel=1e-4), (l1, l2)
    c1, c2 = checkpoint.load(one / "last.pt"), checkpoint.load(two / "last.pt")
    assert c1["step"] == c2["step"] == STEPS
    moved = _relative_distance(c1["online"], _initial_online())
    assert moved > 1e-3  # the weights did move: the comparison below can tell runs apart
    for part in ("online", "target"):
        assert _relative_distance(c1[part], c2[part]) <= 1e-4, part


def _initial_online():
    from detcon.config import resolve
    from detcon.step import build_models

    cfg = _cfg("unused")
    resolve(cfg, dataset_size=16)  # validates
    online, _ = build_models(cfg, torch.device("cpu"))
    return online.net.state_dict()


def test_mask_draws_do_not_depend_on_the_process():
    """The ids of an image come from its own uniforms: the same on any rank, in any batch."""
    from detcon.data.loader import SeededItems, mask_uniforms
    from detcon.masks import downsample_masks, sample_mask_ids

    u = mask_uniforms(0, 3, 5, 4)
    assert u.shape == (2, 4) and (u >= 0).all() and (u < 1).all()
    assert (mask_uniforms(0, 3, 5, 4) == u).all() and not (mask_uniforms(0, 3, 6, 4) == u).all()
    item = SeededItems(_Maps(), seed=0, num_masks=4)[(3, 5)]
    assert torch.equal(item["mask_u"], torch.from_numpy(u))
    cells = downsample_masks(torch.arange(16).reshape(1, 4, 4).repeat(3, 1, 1), 4)
    uniforms = torch.from_numpy(u[:1]).repeat(3, 1)
    ids = sample_mask_ids(cells, 4, uniforms=uniforms)
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[1], ids[2])  # batch position
    # floor(u * count) among the 16 present ids, in ascending order
    assert ids[0].tolist() == [int(x * 16) for x in u[0]]


class _Maps(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"index": i}
