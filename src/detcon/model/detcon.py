"""The DetCon network: backbone -> mask pooling -> projector -> (predictor).

One class serves both variants: DetCon-B (BYOL-style, ``predictor=True`` plus an EMA target
made with :func:`make_target`) and DetCon-S (SimCLR-style, ``predictor=False``, no target).
Mask ids are sampled outside the network, once per view, and passed to online and target alike.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from detcon.masks.sampling import distinct_pairs

from .backbone import Backbone, build_backbone
from .heads import MLP, check_init
from .pooling import mask_pool


class DetConOutput(NamedTuple):
    """``features`` ``[B, C]`` global spatial mean of the backbone output (what the official
    online classifier sees); ``proj`` ``[B, K, D]`` projections of the mask-pooled features;
    ``pred`` ``[B, K, D]`` predictor outputs, or ``None`` without a predictor."""

    features: torch.Tensor
    proj: torch.Tensor
    pred: torch.Tensor | None


def distinct_rows(mask_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct (image, id) pairs of ``mask_ids [B, K]``: ``(first [U], inverse [B*K], counts
    [U])``: the flat index of each pair's first draw, the pair of every draw, and how many
    draws each pair has."""
    B, K = mask_ids.shape
    _, inverse, counts = distinct_pairs(mask_ids)
    flat = torch.arange(B * K, device=mask_ids.device)
    first = torch.full_like(counts, B * K).scatter_reduce(0, inverse, flat, "amin")
    return first, inverse, counts


class DetConNet(nn.Module):
    """Backbone + projector MLP + optional predictor MLP (docs/official.md §5).

    Args:
        backbone: a module mapping ``[B,3,H,W] -> [B,C,h,w]`` with an ``out_channels`` attribute
            (a :class:`~detcon.model.backbone.Backbone`).
        proj_hidden, proj_dim: projector widths, C -> 4096 -> 256 officially.
        predictor: build the predictor (DetCon-B); ``False`` for DetCon-S.
        pred_hidden: predictor hidden width, D -> 4096 -> D officially.
        head_init: ``"torchvision"`` or ``"official"`` init of the MLP linears.
        distinct_heads: run the projector and predictor once per distinct (image, id) of the
            K draws, with BatchNorm statistics weighted by the draw counts
            (:func:`~detcon.model.heads.weighted_batch_norm`): the same outputs, gradients and
            running statistics as on all ``B*K`` rows (duplicate draws pool equal vectors), at
            a fraction of the cost. ``False`` runs them on every row.

    Children: ``backbone``, ``projector``, ``predictor`` (``None`` when ``predictor=False``), so
    state-dict keys are ``backbone.*``, ``projector.*``, ``predictor.*``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        predictor: bool = True,
        pred_hidden: int = 4096,
        *,
        head_init: str = "torchvision",
        distinct_heads: bool = True,
    ) -> None:
        super().__init__()
        channels = getattr(backbone, "out_channels", None)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError("backbone must expose a positive int `out_channels` attribute")
        check_init(head_init)
        self.head_init = head_init
        self.distinct_heads = distinct_heads
        self.backbone = backbone
        self.projector = MLP(channels, proj_hidden, proj_dim, init=head_init)
        self.predictor = MLP(proj_dim, pred_hidden, proj_dim, init=head_init) if predictor else None

    @classmethod
    def build(
        cls,
        backbone_name: str,
        *,
        width_multiplier: int = 1,
        zero_init_residual: bool = True,
        init: str = "torchvision",
        channels_last: bool = False,
        **head_kwargs,
    ) -> DetConNet:
        """``DetConNet(build_backbone(backbone_name, ...), **head_kwargs)``; ``init`` applies to
        both the backbone and the heads."""
        backbone = build_backbone(
            backbone_name,
            width_multiplier=width_multiplier,
            zero_init_residual=zero_init_residual,
            init=init,
            channels_last=channels_last,
        )
        return cls(backbone, head_init=init, **head_kwargs)

    def reset_parameters(self, init: str | None = None) -> None:
        """Fresh random weights everywhere, with ``init`` or else each part's constructor choice
        (a non-:class:`Backbone` backbone resets its submodules' own ``reset_parameters``)."""
        if isinstance(self.backbone, Backbone):
            self.backbone.reset_parameters(init)  # None: the backbone's own init
        else:
            for mod in self.backbone.modules():
                reset = getattr(mod, "reset_parameters", None)
                if mod is not self.backbone and reset is not None:
                    reset()
        for head in (self.projector, self.predictor):
            if head is not None:
                head.reset_parameters(self.head_init if init is None else init)

    def forward(
        self, images: torch.Tensor, cell_ids: torch.Tensor, mask_ids: torch.Tensor
    ) -> DetConOutput:
        """images ``[B,3,H,W]`` normalised, cell_ids ``[B,h,w]`` long on the backbone's output
        grid, mask_ids ``[B,K]`` long. For whole-image methods (BYOL/SimCLR) pass a label map of
        zeros and ``mask_ids`` of zeros ``[B,1]``."""
        if images.dim() != 4:
            raise ValueError(f"images must be [B,3,H,W], got {tuple(images.shape)}")
        if cell_ids.dim() != 3 or cell_ids.shape[0] != images.shape[0]:
            raise ValueError(
                f"cell_ids must be [B,h,w] with B={images.shape[0]}, got {tuple(cell_ids.shape)}"
            )
        feats = self.backbone(images)  # [B, C, h, w]
        if tuple(cell_ids.shape[1:]) != tuple(feats.shape[2:]):
            raise ValueError(
                f"cell_ids grid {tuple(cell_ids.shape[1:])} != backbone output grid "
                f"{tuple(feats.shape[2:])} for images {tuple(images.shape)}"
            )
        pooled = mask_pool(feats, cell_ids, mask_ids)  # [B, K, C]
        B, K = mask_ids.shape
        if self.distinct_heads and K > 1:  # heads on distinct (image, id) rows only
            first, inverse, counts = distinct_rows(mask_ids)  # [U], [B*K], [U]
            rows = pooled.reshape(B * K, -1)[first]  # [U, C]
            proj_u = self.projector(rows, counts)  # [U, D]
            pred_u = self.predictor(proj_u, counts) if self.predictor is not None else None
            proj = proj_u[inverse].reshape(B, K, -1)  # [B, K, D]: duplicates share a row
            pred = pred_u[inverse].reshape(B, K, -1) if pred_u is not None else None
        else:
            proj = self.projector(pooled)  # [B, K, D]
            pred = self.predictor(proj) if self.predictor is not None else None  # [B, K, D]
        return DetConOutput(features=feats.mean(dim=(2, 3)), proj=proj, pred=pred)


def make_target(online: nn.Module, reinit: bool = False) -> nn.Module:
    """The EMA target network: a deep copy of ``online`` with ``requires_grad=False`` everywhere.

    Deviation (default): the copy starts from the online weights, as PyTorch BYOL ports do. The
    official code initialises the target from a *different* random key (docs/official.md §8;
    its comments say this made no difference). ``reinit=True`` reproduces that: the copy is
    re-initialised with fresh random weights via its ``reset_parameters()``.

    The copy keeps ``online``'s train/eval mode; the official target runs its forward in
    training mode (batch statistics), so leave it in ``train()`` during pretraining. Pass the
    unwrapped module (not a DDP or compiled wrapper).
    """
    if isinstance(online, nn.parallel.DistributedDataParallel | nn.DataParallel) or hasattr(
        online, "_orig_mod"
    ):
        raise TypeError("make_target expects the unwrapped online module (use distributed.unwrap)")
    target = copy.deepcopy(online)
    if reinit:
        reset = getattr(target, "reset_parameters", None)
        if reset is None:
            raise TypeError(f"reinit=True needs {type(target).__name__}.reset_parameters()")
        reset()
    for p in target.parameters():
        p.requires_grad_(False)
    return target
