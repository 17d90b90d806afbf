"""Kill-and-resume: 6 uninterrupted steps == 3 steps + SIGTERM + resume to 6, bit for bit."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from tiny import TINY_TRAIN

from detcon import checkpoint
from detcon.config import load_config
from detcon.data import SyntheticDataset
from detcon.data.loader import EpochSampler, SeededItems
from detcon.train import train

TINY = TINY_TRAIN + ["train.steps=6", "optim.warmup_epochs=1", "train.ckpt_every=100"]


class SigtermAt(torch.utils.data.Dataset):
    """Sends SIGTERM to this process when item read number ``at`` happens (main-process
    loading), i.e. while the batch of a given step is being loaded."""

    def __init__(self, at: int | None):
        self.inner, self.reads, self.at = SyntheticDataset(8, size=64), 0, at

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.inner[i]


def _states(path):
    ckpt = checkpoint.load(path)
    return ckpt, {
        **{f"online.{k}": v for k, v in ckpt["online"].items()},
        **{f"target.{k}": v for k, v in ckpt["target"].items()},
    }


@pytest.mark.slow
def test_sigterm_then_resume_gives_identical_weights(tmp_path):
    full = train(
        load_config(None, TINY + [f"train.out={tmp_path / 'full'}"]), dataset=SigtermAt(None)
    )
    assert full["step"] == 6
    # reads 9..12 load step 3's batch (batch 4): the signal arrives during step 3
    cut = load_config(None, TINY + [f"train.out={tmp_path / 'cut'}"])
    first = train(cut, dataset=SigtermAt(9))
    assert first["stopped"] and first["step"] == 3
    assert checkpoint.load(tmp_path / "cut" / "last.pt")["extra"]["batch_in_epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    again = load_config(None, TINY + [f"train.out={tmp_path / 'cut'}", "train.resume=auto"])
    second = train(again, dataset=SigtermAt(None))
    assert second["step"] == 6 and not second["stopped"]

    ckpt_a, a = _states(tmp_path / "full" / "last.pt")
    ckpt_b, b = _states(tmp_path / "cut" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    mom_a = [
        s["momentum_buffer"]
        for s in ckpt_a["optimizer"]["state"].values()
        if "momentum_buffer" in s
    ]
    mom_b = [
        s["momentum_buffer"]
        for s in ckpt_b["optimizer"]["state"].values()
        if "momentum_buffer" in s
    ]
    assert len(mom_a) == len(mom_b) > 0 and all(
        torch.equal(x, y) for x, y in zip(mom_a, mom_b, strict=True)
    )


def test_data_order_is_pure_and_skip_resumes_mid_epoch():
    s = EpochSampler(10, num_replicas=2, rank=1, seed=3)
    s.set_epoch(4)
    whole = list(s)
    assert all(e == 4 for e, _ in whole) and len(whole) == 5
    s.set_epoch(4, skip=2)
    assert list(s) == whole[2:] and len(s) == 3
    s.set_epoch(5)
    assert list(s) != [(5, i) for _, i in whole]
    # items are a pure function of (seed, epoch, index), whatever happened before
    items = SeededItems(SyntheticDataset(4, size=64), seed=0)
    x = items[(1, 2)]["view_a"]
    torch.rand(5)
    assert torch.equal(items[(1, 2)]["view_a"], x)
    assert not torch.equal(items[(2, 2)]["view_a"], x)
