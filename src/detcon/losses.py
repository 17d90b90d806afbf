"""The DetCon contrastive loss (Hénaff et al., ICCV 2021, Sec. 3.1, Eq. 3).

A pure function of tensors: no :mod:`torch.distributed`, no device handling. The training step
gathers the targets of all processes with ``detcon.distributed.all_gather`` and passes
``batch_offset = rank * B``; on one process the targets are the local ones and the offset is 0.

The semantics follow the official DetCon-B loss (``byol_nce_detcon``; see the design notes
on the official implementation, section 6.2):

* every prediction row ``(b, k)`` of view ``v`` is scored against all target rows of *both*
  views of *all* images (``2 * N * K`` columns), logits ``<n(pred), n(target)> / temperature``;
* positives: the other view's target rows of the same image whose id equals the row's id
  (several when an id was drawn several times; each gets label ``1 / num_pos``);
* the same view's target rows of the same image with the same id are excluded;
* everything else is a negative ("local negatives" are the other masks of the same image;
  ``local_negatives=False`` excludes them too, leaving only other images as negatives);
* row weight ``[num_pos > 0] / dup(b, k)`` with ``dup`` the number of draws of that id in the
  row's own view, a plain mean over all ``B * K`` rows, and the two views are **summed**.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detcon.masks.sampling import ID_SPAN, distinct_pairs

# Official l2_normalize bounds the *squared* norm from below (differs from F.normalize).
_NORM_EPS_SQ = 1e-12
# Official exclusion value, applied after dividing by the temperature.
_EXCLUDED = -1e9


def _normalize(x: Tensor) -> Tensor:
    """``x * rsqrt(max(sum(x^2), 1e-12))`` along the last dimension (official l2_normalize)."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True).clamp(min=_NORM_EPS_SQ))


def _check_ids(name: str, ids: Tensor, shape: tuple[int, int]) -> None:
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
    if tuple(ids.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")


def _validate(pred_a, pred_b, target_a, target_b, ids, temperature, batch_offset) -> None:
    if pred_a.ndim != 3 or pred_a.shape != pred_b.shape:
        raise ValueError(
            f"pred_a/pred_b must both be [B,K,D], got {tuple(pred_a.shape)} and {tuple(pred_b.shape)}"
        )
    if target_a.ndim != 3 or target_a.shape != target_b.shape:
        raise ValueError(
            f"target_a/target_b must both be [N,K,D], got {tuple(target_a.shape)} and "
            f"{tuple(target_b.shape)}"
        )
    B, K, D = pred_a.shape
    N, Kt, Dt = target_a.shape
    if Dt != D:
        raise ValueError(f"embedding sizes differ: pred D={D}, target D={Dt}")
    if B == 0 or K == 0 or Kt == 0:
        raise ValueError(
            f"empty inputs: pred {tuple(pred_a.shape)}, target {tuple(target_a.shape)}"
        )
    if not 0 <= batch_offset or batch_offset + B > N:
        raise ValueError(
            f"batch_offset={batch_offset} with B={B} local images does not fit in the N={N} "
            "gathered target images (need 0 <= batch_offset <= N - B)"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for name, t, shape in zip(
        ("pred_ids_a", "pred_ids_b", "target_ids_a", "target_ids_b"),
        ids,
        ((B, K), (B, K), (N, Kt), (N, Kt)),
        strict=True,
    ):
        _check_ids(name, t, shape)


def _view_loss(
    pred: Tensor,  # [B,K,D] normalised predictions of view v
    target_w: Tensor,  # [N,Kt,D] normalised targets of the other view w
    target_v: Tensor,  # [N,Kt,D] normalised targets of the same view v
    pid: Tensor,  # [B,K] prediction ids of view v
    tid_w: Tensor,  # [N,Kt]
    tid_v: Tensor,  # [N,Kt]
    temperature: float,
    local_negatives: bool,
    batch_offset: int,
) -> Tensor:
    B, K, D = pred.shape
    N, Kt, _ = target_w.shape
    columns = torch.cat([target_w, target_v], 0).reshape(2 * N * Kt, D)  # [2NKt, D], w block first
    logits = (pred.reshape(B * K, D) @ columns.T) / temperature  # [BK, 2NKt]
    # Image-major layout so that the own-image columns are logits[b, b + offset]: [B,N,K,2,Kt]
    logits = logits.view(B, K, 2, N, Kt).permute(0, 3, 1, 2, 4)
    rows = torch.arange(B, device=pred.device)
    own = rows + batch_offset  # global index of each local image
    diag = logits[rows, own]  # [B,K,2,Kt]: columns of the row's own image, both views
    own_ids = torch.stack([tid_w[own], tid_v[own]], 1)  # [B,2,Kt]
    match = pid[:, :, None, None] == own_ids[:, None, :, :]  # [B,K,2,Kt]
    pos = match[:, :, 0]  # [B,K,Kt] positives: other view, same id
    if local_negatives:
        # Same view, same id: the row's own target and its duplicate draws.
        excluded = torch.stack([torch.zeros_like(pos), match[:, :, 1]], 2)  # [B,K,2,Kt]
    else:
        # Every non-positive column of the own image, in both views.
        excluded = torch.stack([~pos, torch.ones_like(pos)], 2)  # [B,K,2,Kt]
    logits[rows, own] = diag.masked_fill(excluded, _EXCLUDED)  # in place: no copy of logits
    lse = torch.logsumexp(logits, dim=(1, 3, 4))  # [B,K] log-partition over all 2NKt columns

    num_pos = pos.sum(-1)  # [B,K]
    has_pos = num_pos > 0
    # Labels 1/num_pos on the positives: ce = lse - mean of positive logits.
    pos_mean = (diag[:, :, 0] * pos).sum(-1) / num_pos.clamp(min=1)  # [B,K]
    ce = torch.where(has_pos, lse - pos_mean, torch.zeros_like(lse))  # [B,K]
    dup = (pid[:, :, None] == pid[:, None, :]).sum(-1)  # [B,K] draws of the same id, >= 1
    weight = has_pos.to(ce.dtype) / dup.to(ce.dtype)
    return (weight * ce).sum() / (B * K)  # mean over all B*K rows, unmatched ones included


def _distinct(x: Tensor, ids: Tensor, image_offset: int = 0):
    """Group the rows of ``x [M, K, D]`` by (image, id): ``(vectors [U, D], counts [U], image
    [U], key [U])``, keys sorted (:func:`detcon.masks.sampling.distinct_pairs`). A group's
    vector is the mean of its rows, so its gradient is shared equally by the duplicates
    (which, pooled from one mask, are equal vectors: the mean is then each of them)."""
    M, K, D = x.shape
    key, inverse, counts = distinct_pairs(ids, image_offset)
    sums = torch.zeros(key.numel(), D, dtype=x.dtype, device=x.device)
    sums = sums.index_add(0, inverse, x.reshape(M * K, D))
    vectors = sums / counts.to(x.dtype)[:, None]
    return vectors, counts, torch.div(key, ID_SPAN, rounding_mode="floor"), key


def _lookup(sorted_keys: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """(index of each key in ``sorted_keys``, found) for int64 keys."""
    pos = torch.searchsorted(sorted_keys, keys).clamp(max=max(sorted_keys.numel() - 1, 0))
    return pos, sorted_keys[pos] == keys


def _view_loss_distinct(
    pred: Tensor,  # [B,K,D] predictions of view v (not normalised)
    cols_w: tuple,  # _distinct(...) of the other view's targets, columns normalised
    cols_v: tuple,  # the same for this view's targets
    pid: Tensor,
    temperature: float,
    local_negatives: bool,
    batch_offset: int,
) -> Tensor:
    """:func:`_view_loss` over distinct (image, id) rows and columns with their multiplicities.

    Rows: a distinct (b, i) stands for its ``r`` duplicate draws, each weighted 1/r in the
    official loss, so it enters once. Columns: a distinct (u, j) drawn ``c`` times enters the
    softmax denominator as ``x + log c``; its ``c`` positive copies (labels 1/c each) give one
    positive logit. Equal to the official loss (value and gradients) when duplicate rows are
    equal vectors, as mask-pooled ones are; otherwise it is the loss of the group means.
    """
    B, K, _ = pred.shape
    rows, _, row_image, row_key = _distinct(pred, pid, batch_offset)  # [R, D]
    (unit_w, count_w, img_w, key_w), (unit_v, count_v, img_v, key_v) = cols_w, cols_v
    rows = _normalize(rows)
    columns = torch.cat([unit_w, unit_v], 0)  # [Cw + Cv, D], w block first
    logits = rows @ columns.T / temperature  # [R, Cw + Cv]
    cw = unit_w.shape[0]
    r = torch.arange(rows.shape[0], device=rows.device)
    # positive: the other view's column of the row's own image and id (at most one, distinct)
    pos_at, has_pos = _lookup(key_w, row_key)
    pos_logit = logits[r, pos_at]
    if local_negatives:  # exclude the same view's column of the own image and id
        same_at, found = _lookup(key_v, row_key)
        excluded = torch.zeros_like(logits, dtype=torch.bool)
        excluded[r[found], cw + same_at[found]] = True
    else:  # every column of the own image except the positive, in both blocks
        own = row_image[:, None] == torch.cat([img_w, img_v])[None, :]
        keep = torch.zeros_like(own)
        keep[r[has_pos], pos_at[has_pos]] = True
        excluded = own & ~keep
    logits = logits.masked_fill(excluded, _EXCLUDED)
    log_count = torch.cat([count_w, count_v]).to(logits.dtype).log()
    lse = torch.logsumexp(logits + log_count, dim=1)  # [R]
    ce = torch.where(has_pos, lse - pos_logit, torch.zeros_like(lse))
    return ce.sum() / (B * K)


def detcon_loss(
    pred_a: Tensor,
    pred_b: Tensor,
    target_a: Tensor,
    target_b: Tensor,
    pred_ids_a: Tensor,
    pred_ids_b: Tensor,
    target_ids_a: Tensor,
    target_ids_b: Tensor,
    *,
    temperature: float = 0.1,
    local_negatives: bool = True,
    batch_offset: int = 0,
    distinct: bool = False,
) -> Tensor:
    """Symmetrised DetCon loss of this process (official ``byol_nce_detcon`` semantics).

    Args:
        pred_a, pred_b: ``[B,K,D]`` predictions of views a and b for this process's B images
            (DetCon-B: online predictor outputs; DetCon-S: online projections).
        target_a, target_b: ``[N,K',D]`` targets of views a and b for all N images of all
            processes, in rank order (N = B on one process). DetCon-B: EMA target projections
            (no grad); DetCon-S: the gathered online projections (with grad).
        pred_ids_a, pred_ids_b: integer ``[B,K]`` mask ids of the prediction rows.
        target_ids_a, target_ids_b: integer ``[N,K']`` mask ids of the target rows.
        temperature: softmax temperature tau (official 0.1).
        local_negatives: if False, other masks of the same image are not used as negatives.
        batch_offset: index in the target batch of this process's first image
            (``rank * B`` with equal per-process batches).
        distinct: compute over distinct (image, id) rows and columns with their
            multiplicities (:func:`_view_loss_distinct`): the same value and gradients as the
            official computation when rows that share (image, id) are equal vectors (mask-pooled
            rows are), with logits ``[R, C]`` instead of ``[B*K, 2*N*K]`` (R, C: distinct
            pairs, a few per image instead of K). The training step uses it.

    Returns:
        Scalar ``L_1 + L_2``, each view's loss a mean over its ``B*K`` rows (rows without a
        positive contribute 0 and still count). With R processes the mean of the per-process
        losses equals the single-process loss on the whole batch, so DDP's gradient averaging
        reproduces the full-batch gradient.

    Computed in ``promote_types(dtype, float32)`` with autocast disabled: under bf16/fp16
    autocast the result is float32, float64 inputs stay float64.
    """
    ids = (pred_ids_a, pred_ids_b, target_ids_a, target_ids_b)
    _validate(pred_a, pred_b, target_a, target_b, ids, temperature, batch_offset)
    dtype = torch.promote_types(torch.promote_types(pred_a.dtype, target_a.dtype), torch.float32)
    pid_a, pid_b, tid_a, tid_b = (t.to(device=pred_a.device, dtype=torch.long) for t in ids)
    with torch.autocast(device_type=pred_a.device.type, enabled=False):
        common = (temperature, local_negatives, batch_offset)
        if distinct:  # normalised after grouping (a group mean of equal rows is each of them)
            cols = []  # each view's target groups, made and normalised once
            for t, tid in ((target_a, tid_a), (target_b, tid_b)):
                vectors, *rest = _distinct(t.to(dtype), tid)
                cols.append((_normalize(vectors), *rest))
            q_a, q_b = pred_a.to(dtype), pred_b.to(dtype)
            loss_a = _view_loss_distinct(q_a, cols[1], cols[0], pid_a, *common)
            loss_b = _view_loss_distinct(q_b, cols[0], cols[1], pid_b, *common)
        else:
            p_a, p_b, t_a, t_b = (
                _normalize(x.to(dtype)) for x in (pred_a, pred_b, target_a, target_b)
            )
            loss_a = _view_loss(p_a, t_b, t_a, pid_a, tid_b, tid_a, *common)
            loss_b = _view_loss(p_b, t_a, t_b, pid_b, tid_a, tid_b, *common)
    return loss_a + loss_b


class DetConLoss(nn.Module):
    """Stores and validates the loss hyperparameters; ``forward`` calls :func:`detcon_loss`.

    Official DetCon-B values: ``temperature=0.1``, ``local_negatives=True``.
    """

    def __init__(self, temperature: float = 0.1, local_negatives: bool = True) -> None:
        super().__init__()
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)
        self.local_negatives = bool(local_negatives)

    def forward(
        self,
        pred_a: Tensor,
        pred_b: Tensor,
        target_a: Tensor,
        target_b: Tensor,
        pred_ids_a: Tensor,
        pred_ids_b: Tensor,
        target_ids_a: Tensor,
        target_ids_b: Tensor,
        batch_offset: int = 0,
    ) -> Tensor:
        return detcon_loss(
            pred_a,
            pred_b,
            target_a,
            target_b,
            pred_ids_a,
            pred_ids_b,
            target_ids_a,
            target_ids_b,
            temperature=self.temperature,
            local_negatives=self.local_negatives,
            batch_offset=batch_offset,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, local_negatives={self.local_negatives}"


def byol_loss(pred_a: Tensor, pred_b: Tensor, target_a: Tensor, target_b: Tensor) -> Tensor:
    """BYOL's normalised regression loss (Grill et al., 2020): no negatives.

    ``||n(p) - n(z)||^2 = 2 - 2 cos(p, z)`` between the online prediction of one view and the
    target projection of the other, with the official ``l2_normalize`` (``x * rsqrt(max(sum
    x^2, 1e-12))``, so a zero vector stays zero and its loss against a unit vector is 1, not
    2), averaged over the batch and summed over the two directions (``pred_a`` vs ``target_b``,
    ``pred_b`` vs ``target_a``), as the official ``regression_loss``. Range ``[0, 8]``.

    Args:
        pred_a, pred_b: ``[B, D]`` online predictions of views a and b (this process's rows).
        target_a, target_b: ``[B, D]`` target projections of views a and b (the caller detaches
            them). No gathering: each process's mean, averaged by DDP, is the global mean.

    Computed in ``promote_types(dtype, float32)`` with autocast disabled.
    """
    shapes = [tuple(x.shape) for x in (pred_a, pred_b, target_a, target_b)]
    if pred_a.ndim != 2 or len(set(shapes)) != 1 or pred_a.shape[0] == 0:
        raise ValueError(f"byol_loss expects four [B,D] tensors of one shape, got {shapes}")
    dtype = torch.promote_types(torch.promote_types(pred_a.dtype, target_a.dtype), torch.float32)
    with torch.autocast(device_type=pred_a.device.type, enabled=False):
        p_a, p_b, t_a, t_b = (_normalize(x.to(dtype)) for x in (pred_a, pred_b, target_a, target_b))
        loss_a = (p_a - t_b).square().sum(-1).mean()  # [B] -> scalar
        loss_b = (p_b - t_a).square().sum(-1).mean()
    return loss_a + loss_b
