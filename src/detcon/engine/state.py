"""Checkpoint assembly / restore, RNG states, and clean-stop signal handling."""

from __future__ import annotations

import logging
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from detcon import checkpoint
from detcon.config import to_dict

log = logging.getLogger("detcon.train")


def rng_state() -> dict:
    """Global RNG states (torch CPU, CUDA, numpy, python). The mask-sampling generator needs no
    state: it is re-seeded from (seed, step, rank) every step."""
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict:
    """numpy's legacy RNG state as tensors and plain numbers (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(cfg, step, online, target, optimizer, scaler) -> dict:
    """The pretraining checkpoint dict (layout in :mod:`detcon.checkpoint`)."""
    t = cfg.train
    probe = online.probe.state_dict() if online.probe is not None else None
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "kind": "detcon-pretrain",
        "step": step,
        "config": to_dict(cfg),
        "model": {
            "backbone": cfg.model.backbone,
            "width_multiplier": cfg.model.width_multiplier,
            "output_stride": cfg.model.output_stride,
            "padding": cfg.model.padding,
        },
        "online": online.net.state_dict(),
        "target": target.state_dict() if target is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng_state(),
        "extra": {
            "epoch": step // t.steps_per_epoch,
            "batch_in_epoch": step % t.steps_per_epoch,
            "probe": probe,
        },
    }


def restore(ckpt: dict, online, target, optimizer, scaler) -> int:
    """Load a checkpoint into the (unwrapped) modules; returns the step to continue from."""
    if ckpt.get("kind") != "detcon-pretrain":
        raise ValueError(f"not a pretraining checkpoint (kind={ckpt.get('kind')!r})")
    online.net.load_state_dict(ckpt["online"])
    if target is not None:
        if ckpt["target"] is None:
            raise ValueError("checkpoint has no target network but this method needs one")
        target.load_state_dict(ckpt["target"])
    probe = ckpt.get("extra", {}).get("probe")
    if online.probe is not None and probe is not None:
        online.probe.load_state_dict(probe)
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler") is not None and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def find_resume(cfg) -> Path | None:
    """The checkpoint to resume from: ``train.resume`` = never | auto | a path."""
    r = cfg.train.resume
    if r in ("never", "", "false", "False"):
        return None
    path = Path(cfg.train.out) / "last.pt" if r in ("auto", "true", "True") else Path(r)
    if path.is_file():
        return path
    if r in ("auto", "true", "True"):
        return None
    raise FileNotFoundError(f"train.resume: checkpoint not found: {path}")


class StopFlag:
    """SIGTERM / SIGINT set ``flag.stop``; the loop then saves and exits cleanly.

    Handlers are installed only in the main thread and restored by :meth:`close`. A second
    SIGINT falls back to the previous handler (so Ctrl-C twice still interrupts).
    """

    def __init__(self):
        self.stop = False
        self.signum = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.stop and signum == signal.SIGINT and callable(self._old.get(signum)):
            self._old[signum](signum, frame)
        self.stop, self.signum = True, signum
        log.warning("received signal %d: saving a checkpoint and stopping", signum)

    def close(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class BufferGuard:
    """Copies of the modules' buffers (BN running statistics) taken before each step, so that a
    forward pass that produced a non-finite loss (and already updated the running statistics
    with NaN) can be undone before the last good state is saved. Buffers are small (under 1 MB
    for ResNet-50 + heads); the copy is one fused ``_foreach_copy_``."""

    def __init__(self, *modules):
        self.live = [b for m in modules if m is not None for b in m.buffers()]
        self.saved = [b.detach().clone() for b in self.live]

    def snapshot(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    def restore(self) -> None:
        if self.live:
            with torch.no_grad():
                torch._foreach_copy_(self.live, self.saved)
