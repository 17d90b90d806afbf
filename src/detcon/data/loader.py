"""Reproducible, resumable data order for pretraining.

* :class:`EpochSampler` is a :class:`~torch.utils.data.DistributedSampler` whose order is a pure
  function of ``(seed, epoch)``; it yields ``(epoch, index)`` keys and can skip the samples of the
  batches already consumed in the current epoch (resume).
* :class:`SeededItems` turns each key into an item with python / numpy / torch seeded from
  ``(seed, epoch, index)``, so augmentations do not depend on worker count or on history; it
  also draws the item's mask-sampling uniforms from that seed, so the mask ids of an image do
  not depend on which process or batch position it lands in (P processes = one process).

Together they make a resumed run see exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import random
from collections.abc import Sized
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detcon.config import Config, RunPlan


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixing (seed, epoch, index) with SplitMix64-style constants."""
    x = seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    return x >> 1


def mask_uniforms(seed: int, epoch: int, index: int, num_masks: int) -> np.ndarray:
    """float32 ``[2, K]`` in [0, 1): the uniforms from which view a's and view b's K mask ids
    of item ``(epoch, index)`` are drawn (:func:`detcon.masks.sample_mask_ids`). A stream of
    its own (the augmentations' RNGs are untouched), a pure function of the item."""
    rng = np.random.default_rng([item_seed(seed, epoch, index), 0x3A5C])
    return rng.random((2, num_masks), dtype=np.float32)


class SeededItems(Dataset):
    """``ds[(epoch, index)] = inner[index % len(inner)]`` computed under RNGs seeded from
    ``(seed, epoch, index)``. Global RNG states are restored afterwards (so loading in the main
    process does not disturb the training RNG). With ``num_masks`` > 0 every item also gets
    ``"mask_u"``: :func:`mask_uniforms` of its key."""

    def __init__(self, inner: Dataset, seed: int, repeat: int = 1, num_masks: int = 0):
        self.inner, self.seed, self.repeat = inner, seed, max(1, repeat)
        self.num_masks = num_masks

    def __len__(self) -> int:
        return len(cast(Sized, self.inner)) * self.repeat

    def __getitem__(self, key):
        epoch, index = key
        key_args = (self.seed, epoch, index)
        s = item_seed(*key_args)
        saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)
        try:
            item = self.inner[index % len(cast(Sized, self.inner))]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.set_rng_state(saved[2])
        if self.num_masks > 0:
            item = {**item, "mask_u": torch.from_numpy(mask_uniforms(*key_args, self.num_masks))}
        return item


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffle, drop_last) over ``range(size)`` yielding ``(epoch, index)``.

    Call :meth:`set_epoch` each epoch. ``skip`` (samples of this rank to drop from the start of
    the epoch) is set on resume for the first epoch only and cleared by :meth:`set_epoch`.
    """

    def __init__(self, size: int, num_replicas: int, rank: int, seed: int):
        super().__init__(
            cast(Dataset, range(size)),  # the sampler only needs len()
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        for i, index in enumerate(super().__iter__()):
            if i >= self.skip:
                yield (self.epoch, int(index))

    def __len__(self) -> int:
        return self.num_samples - self.skip


def build_dataset(cfg: Config) -> Dataset:
    """The pretraining dataset named by ``cfg.data.data`` with ``cfg.masks.source`` region maps
    (``data.repeat`` is applied by :class:`SeededItems`, not here)."""
    from detcon.data.builtin import build_pretrain_dataset

    return build_pretrain_dataset(
        cfg.data.data,
        cfg.masks.source,
        cfg.data.image_size,
        crop=cfg.data.crop,
        photometric=cfg.data.photometric,
        antialias=cfg.data.antialias,
        compute_missing=cfg.masks.compute_missing,
        coco_json=cfg.data.coco_json or None,
        class_tree=cfg.data.class_tree,
        seed=cfg.train.seed,
        augment_on=cfg.data.augment_on,
        subset=cfg.data.subset,
        fraction=cfg.data.fraction,
    )


def num_classes(dataset) -> int:
    """Number of labels of a class-tree dataset (0 when items carry no ``"label"``)."""
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes else int(getattr(dataset, "num_classes", 0) or 0)


def build_loader(dataset: Dataset, cfg: Config, plan: RunPlan, rank: int, device: torch.device):
    """(loader, sampler) of process ``rank`` for the run: micro-batches of
    ``plan.local_batch``, in the order of :class:`EpochSampler`."""
    items = SeededItems(dataset, cfg.train.seed, cfg.data.repeat, num_masks=cfg.masks.num_masks)
    sampler = EpochSampler(len(items), plan.world_size, rank, cfg.train.seed)
    workers = cfg.data.num_workers
    loader = DataLoader(
        items,
        batch_size=plan.local_batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        persistent_workers=cfg.data.persistent_workers and workers > 0,
        drop_last=True,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader, sampler
