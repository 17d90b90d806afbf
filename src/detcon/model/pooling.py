"""Mask pooling: the mean of backbone features over the feature cells of each sampled mask.

This is the pooling of the official ``run_detcon_b_forward_on_view`` (docs/official.md §4):
cells are hard-assigned to one mask id each (``cell_ids``), each sampled id's binary mask is
area-normalised with ``max(area, 1)`` and the pooled vectors are one batched matmul.
"""

from __future__ import annotations

import torch


def _check_ids(cell_ids: torch.Tensor, mask_ids: torch.Tensor) -> None:
    if cell_ids.dim() != 3:
        raise ValueError(f"cell_ids must be [B,h,w], got {tuple(cell_ids.shape)}")
    if mask_ids.dim() != 2:
        raise ValueError(f"mask_ids must be [B,K], got {tuple(mask_ids.shape)}")
    if cell_ids.shape[0] != mask_ids.shape[0]:
        raise ValueError(
            f"batch mismatch: cell_ids {tuple(cell_ids.shape)} vs mask_ids {tuple(mask_ids.shape)}"
        )
    for label, t in (("cell_ids", cell_ids), ("mask_ids", mask_ids)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{label} must be an integer tensor, got {t.dtype}")


def binary_masks(cell_ids: torch.Tensor, mask_ids: torch.Tensor) -> torch.Tensor:
    """``masks[b, k, i] = 1.0 if cell_ids[b].flatten()[i] == mask_ids[b, k] else 0.0``.

    Args:
        cell_ids: integer ``[B, h, w]``, the mask id of every feature cell.
        mask_ids: integer ``[B, K]``, the sampled ids (duplicates allowed).

    Returns float32 ``[B, K, h*w]`` with cells in row-major ``(y, x)`` order. An id that owns
    no cell gives an all-zero row.
    """
    _check_ids(cell_ids, mask_ids)
    cells = cell_ids.flatten(1).to(mask_ids.dtype)  # [B, h*w]
    return (cells[:, None, :] == mask_ids[:, :, None]).float()  # [B, K, h*w]


def mask_pool(
    features: torch.Tensor, cell_ids: torch.Tensor, mask_ids: torch.Tensor
) -> torch.Tensor:
    """Average ``features`` over the cells of each sampled mask.

    Args:
        features: ``[B, C, h, w]`` backbone output.
        cell_ids: integer ``[B, h, w]`` (the same grid as ``features``).
        mask_ids: integer ``[B, K]``.

    Returns ``[B, K, C]``: ``pooled[b, k] = mean(features[b, :, y, x] for cells with
    cell_ids[b, y, x] == mask_ids[b, k])``, and zeros for an id that owns no cell. Duplicate
    ids give identical rows.

    Precision: the pooling is one ``bmm`` computed in at least float32, with autocast turned
    off for it, so bf16/fp16 backbone features are averaged exactly as in the official fp32
    code (the cost is negligible: ``K x h*w`` weights per image). The result is float32 (or
    float64 for float64 features); under autocast the projector casts it back down.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B,C,h,w], got {tuple(features.shape)}")
    _check_ids(cell_ids, mask_ids)
    b, c, h, w = features.shape
    if tuple(cell_ids.shape) != (b, h, w):
        raise ValueError(
            f"cell_ids {tuple(cell_ids.shape)} must match the feature grid (B,h,w)={(b, h, w)}"
        )
    dtype = torch.promote_types(features.dtype, torch.float32)
    masks = binary_masks(cell_ids, mask_ids)  # [B, K, h*w]
    area = masks.sum(dim=-1, keepdim=True).clamp_min(1.0)  # [B, K, 1], official max(area, 1)
    weights = (masks / area).to(dtype)  # [B, K, h*w]
    flat = features.flatten(2).transpose(1, 2).to(dtype)  # [B, h*w, C]
    with torch.autocast(features.device.type, enabled=False):
        return torch.bmm(weights, flat)  # [B, K, C]
