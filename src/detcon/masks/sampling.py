"""Reduce region maps to the feature grid and draw the mask ids of each view.

Both functions are pure, vectorised over the batch, and work on any device. Ids are arbitrary
non-negative integers (no one-hot over the id range, so ids past 255 or 65535 neither wrap nor
cost memory): everything is done by sorting ids within a cell or an image.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor


def _check_label_tensor(name: str, x: Tensor, ndim: int = 3) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D [B,H,W], got shape {tuple(x.shape)}")
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{name} has negative ids (min {int(x.min())}); ids must be >= 0")


def _run_lengths(sorted_rows: Tensor) -> tuple[Tensor, Tensor]:
    """For rows sorted along the last dim: (is-first-of-its-run mask, run length per element)."""
    first = torch.ones_like(sorted_rows, dtype=torch.bool)
    first[..., 1:] = sorted_rows[..., 1:] != sorted_rows[..., :-1]
    run = first.cumsum(-1) - 1  # run index of every element, 0..runs-1
    counts = torch.zeros_like(run).scatter_add_(-1, run, torch.ones_like(run))
    return first, counts.gather(-1, run)


def downsample_masks(label_maps: Tensor, grid: tuple[int, int] | int) -> Tensor:
    """Majority vote of a region map over each cell of a ``grid`` (official ``create_binary_mask``).

    Args:
        label_maps: integer ``[B,H,W]`` region ids (any integer dtype, ids >= 0, unbounded).
        grid: ``(h, w)`` cells (an int means square); ``h`` must divide ``H`` and ``w`` ``W``.

    Returns:
        ``LongTensor[B,h,w]``: the id covering most pixels of each ``H/h x W/w`` cell, ties to
        the lowest id. This equals the official one-hot, average-pool, argmax reduction (whose
        argmax takes the first maximum). An id that wins no cell is absent at this resolution.
    """
    _check_label_tensor("label_maps", label_maps)
    try:
        gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
        gh, gw = operator.index(gh), operator.index(gw)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be an int or a pair of ints (h, w), got {grid!r}") from None
    B, H, W = label_maps.shape
    if gh <= 0 or gw <= 0:
        raise ValueError(f"grid must be positive ints (h, w), got {grid!r}")
    if H % gh or W % gw:
        raise ValueError(f"grid {gh}x{gw} does not divide the label map size {H}x{W}")
    ch, cw = H // gh, W // gw
    cells = label_maps.long().reshape(B, gh, ch, gw, cw).permute(0, 1, 3, 2, 4)  # [B,h,w,ch,cw]
    cells = cells.reshape(B, gh, gw, ch * cw).sort(-1).values  # [B,h,w,P] ascending ids
    _, run_len = _run_lengths(cells)  # [B,h,w,P]
    # argmax returns the first maximum; runs are in ascending id order -> ties to the lowest id.
    winner = run_len.argmax(-1, keepdim=True)  # [B,h,w,1]
    return cells.gather(-1, winner).squeeze(-1)  # [B,h,w]


def sample_mask_ids(
    cell_ids: Tensor,
    num_masks: int,
    generator: torch.Generator | None = None,
    *,
    other: Tensor | None = None,
    uniforms: Tensor | None = None,
) -> Tensor:
    """Draw ``num_masks`` ids per image, uniformly with replacement among the present ids.

    Official behaviour (``other=None``): each view draws independently among the ids present in
    its own ``cell_ids`` (an id is present when it owns at least one cell); duplicates are
    common when an image has few regions, and an id drawn in one view may be absent from the
    other (such rows get weight 0 in the loss).

    Deviation (``other`` given, not in the official code): draw among the ids present in
    *both* views, which raises the fraction of rows with a positive. An image whose two views
    share no id falls back to the ids present in ``cell_ids`` alone.

    Args:
        cell_ids: integer ``[B,h,w]`` grid ids of this view (from :func:`downsample_masks`).
        num_masks: K, draws per image (official 16).
        generator: ``torch.Generator`` on ``cell_ids``'s device (default RNG when None).
        other: optional integer ``[B,h',w']`` grid ids of the other view.
        uniforms: optional ``[B,K]`` floats in [0, 1) used instead of drawing from
            ``generator``: id ``k`` of image ``b`` is candidate ``floor(u[b,k] * count[b])``.
            The training loop passes per-image uniforms (a function of the seed and the image,
            not of the process), so a run on P processes samples the ids of one process.

    Returns:
        ``LongTensor[B,K]`` on ``cell_ids``'s device.
    """
    _check_label_tensor("cell_ids", cell_ids)
    try:
        k = operator.index(num_masks)  # accepts numpy ints, rejects floats
    except TypeError:
        k = 0
    if isinstance(num_masks, bool) or k < 1:
        raise ValueError(f"num_masks must be an int >= 1, got {num_masks!r}")
    num_masks = k
    if generator is not None and generator.device.type != cell_ids.device.type:
        raise ValueError(
            f"generator is on {generator.device}, cell_ids on {cell_ids.device}: "
            "create the generator on the tensor's device"
        )
    B = cell_ids.shape[0]
    if cell_ids[0].numel() == 0:
        raise ValueError(f"cell_ids has no cells: shape {tuple(cell_ids.shape)}")
    ids = cell_ids.reshape(B, -1).long().sort(-1).values  # [B,P] ascending
    present, _ = _run_lengths(ids)  # [B,P] first occurrence of each present id
    if other is not None:
        _check_label_tensor("other", other)
        if other.shape[0] != B or other[0].numel() == 0:
            raise ValueError(f"other must be [B,h,w] with B={B}, got shape {tuple(other.shape)}")
        other_ids = other.to(ids.device).reshape(B, -1).long().sort(-1).values  # [B,P']
        pos = torch.searchsorted(other_ids, ids).clamp(max=other_ids.shape[1] - 1)
        common = present & (other_ids.gather(-1, pos) == ids)  # [B,P]
        has_common = common.any(-1, keepdim=True)  # [B,1]
        present = torch.where(has_common, common, present)
    # Compact the candidate ids of each image to the front, then index uniformly among them.
    sentinel = torch.iinfo(torch.long).max
    candidates = torch.where(present, ids, sentinel).sort(-1).values  # [B,P]
    count = present.sum(-1, keepdim=True)  # [B,1], >= 1
    if uniforms is None:
        u = torch.rand(B, num_masks, generator=generator, device=ids.device)  # [B,K] in [0,1)
    else:
        if tuple(uniforms.shape) != (B, num_masks) or not uniforms.dtype.is_floating_point:
            raise ValueError(
                f"uniforms must be float [B,K] = {(B, num_masks)}, got {tuple(uniforms.shape)} "
                f"{uniforms.dtype}"
            )
        u = uniforms.to(ids.device, torch.float64)
    index = (u * count).long().minimum(count - 1)  # [B,K] in [0, count)
    return candidates.gather(-1, index)


#: (image, id) pairs are packed into one int64 as ``image * ID_SPAN + id`` (ids below 2^31).
ID_SPAN = 1 << 31


def distinct_pairs(ids: Tensor, image_offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct (image, id) pairs of ``ids [M, K]`` (row m is image ``m + image_offset``):
    ``(keys [U], inverse [M*K], counts [U])`` with ``keys = image * ID_SPAN + id`` sorted
    ascending, the pair of every draw and how many draws each pair has."""
    M, K = ids.shape
    image = torch.arange(M, device=ids.device).repeat_interleave(K) + image_offset  # [M*K]
    key = image * ID_SPAN + ids.reshape(-1).long()
    return torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
