"""The EMA update of the target network (docs/official.md §7).

Called once per step, right after ``optimizer.step()``, with ``tau`` from the EMA schedule:
``ema_update_(target, online, tau)``.
"""

from __future__ import annotations

import torch
from torch import nn

from detcon.distributed import unwrap

BUFFER_POLICIES = ("keep", "copy", "ema")


def _paired(kind: str, target_items, online_items) -> tuple[list, list]:
    """Match named tensors by name; raise listing every mismatch of names or shapes."""
    tgt, onl = dict(target_items), dict(online_items)
    only_t, only_o = sorted(set(tgt) - set(onl)), sorted(set(onl) - set(tgt))
    shapes = [
        f"{n}: target {tuple(tgt[n].shape)} vs online {tuple(onl[n].shape)}"
        for n in tgt
        if n in onl and tgt[n].shape != onl[n].shape
    ]
    if only_t or only_o or shapes:
        raise ValueError(
            f"target and online {kind} do not match: only in target={only_t}, "
            f"only in online={only_o}, shape mismatches={shapes}"
        )
    names = list(tgt)
    return [tgt[n] for n in names], [onl[n] for n in names]


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float, buffers: str = "keep") -> None:
    """In place: ``p_target <- tau * p_target + (1 - tau) * p_online`` for every parameter.

    Args:
        target, online: modules with the same parameter names and shapes (DDP / compiled
            wrappers are unwrapped first).
        tau: EMA decay in [0, 1]; 0 copies the online parameters, 1 leaves the target as is.
        buffers: what happens to buffers (BN running mean/var, ``num_batches_tracked``):

            * ``"keep"`` (default, official): the target's buffers are untouched. In the official
              code the target's BN moving averages are its own state, updated by its own
              forward passes in training mode; only params are averaged.
            * ``"copy"``: copy every buffer from online (the common PyTorch-port choice; the
              target's eval-mode statistics then track the online network's).
            * ``"ema"``: average floating buffers like params; integer buffers are copied.

    The parameter update is one fused ``torch._foreach_lerp_`` over all tensors
    (``lerp(t, o, 1 - tau) = t + (1 - tau)(o - t)``, which is exact at tau 0 and 1).
    """
    if isinstance(tau, torch.Tensor):
        tau = float(tau.item())
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:  # also rejects NaN
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if buffers not in BUFFER_POLICIES:
        raise ValueError(f"unknown buffers policy {buffers!r}; valid: {', '.join(BUFFER_POLICIES)}")
    target, online = unwrap(target), unwrap(online)
    if target is online:
        raise ValueError("target and online are the same module")

    t_params, o_params = _paired("parameters", target.named_parameters(), online.named_parameters())
    if t_params:
        o_params = [
            o.to(dtype=t.dtype, device=t.device) for t, o in zip(t_params, o_params, strict=True)
        ]
        torch._foreach_lerp_(t_params, o_params, 1.0 - tau)

    if buffers == "keep":
        return
    t_bufs, o_bufs = _paired("buffers", target.named_buffers(), online.named_buffers())
    o_bufs = [o.to(device=t.device) for t, o in zip(t_bufs, o_bufs, strict=True)]
    if buffers == "ema":  # floating buffers averaged, integer ones (num_batches_tracked) copied
        avg = [i for i, t in enumerate(t_bufs) if t.is_floating_point()]
        if avg:
            torch._foreach_lerp_(
                [t_bufs[i] for i in avg], [o_bufs[i].to(t_bufs[i].dtype) for i in avg], 1.0 - tau
            )
        rest = [i for i in range(len(t_bufs)) if not t_bufs[i].is_floating_point()]
    else:
        rest = list(range(len(t_bufs)))
    for i in rest:
        t_bufs[i].copy_(o_bufs[i])
