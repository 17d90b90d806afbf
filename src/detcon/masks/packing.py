"""Writing a packed mask cache part by part, resumably (used by ``detcon masks --layout packed``).

:func:`plan_parts` decides, for each part of a sorted image listing, what a run must do:

* keep it: the part file exists, holds every image of the part (stored or recorded as
  skipped), all entries are fresh and nothing was skipped: nothing to do;
* retry its skipped images only: the part is rewritten only if one of them now succeeds;
* (re)write it: images with a fresh entry anywhere in the cache (an older part of another
  listing, or a damaged part's readable records) are copied, the others computed.

:class:`PartAssembler` takes the results of the computed images in any order, appends them
to their part's temporary file and commits a part (rename) as soon as its last image is in;
``abort`` removes the temporary files of unfinished parts, so an interrupted run leaves only
complete parts.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detcon.masks.packed import (
    CorruptCacheError,
    PackedMaskCache,
    PartWriter,
    Record,
    part_name,
    read_part,
)

__all__ = ["PartPlan", "plan_parts", "PartAssembler", "num_parts"]


def num_parts(num_images: int, part_size: int) -> int:
    if part_size < 1:
        raise ValueError(f"part size must be >= 1, got {part_size}")
    return math.ceil(num_images / part_size)


@dataclass
class PartPlan:
    """What to do for part ``part``: ``copy`` holds ``(key, index row, source path)`` of the
    entries to carry over, ``compute`` the image paths to (re)compute."""

    part: int
    paths: list[str]
    keys: list[str]
    copy: list[tuple[str, np.void, Path]] = field(default_factory=list)
    compute: list[str] = field(default_factory=list)
    kept: bool = False  # complete and fresh: nothing to do
    retry_only: bool = False  # complete but with skipped images: rewrite only if one succeeds

    @property
    def reused_segments(self) -> list[int]:
        return [int(row["segments"]) for _, row, _ in self.copy]


def _fresh(row, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return int(row["file_size"]) == st.st_size and int(row["mtime_ns"]) == st.st_mtime_ns


def _plan_existing(cache: PackedMaskCache, plan: PartPlan) -> bool:
    """Plan from the part's existing file if it is of the same listing and fresh."""
    path = cache.folder / part_name(plan.part)
    if not path.is_file():
        return False
    try:
        info = read_part(path, keys=True)
    except CorruptCacheError as err:
        warnings.warn(f"{err}: redoing this part", stacklevel=3)
        return False
    meta = info.meta
    if (meta["generator"], meta["params"]) != (cache.name, cache.params):
        return False
    skipped = {key for key, _ in meta["skipped"]}
    keys = info.key_list()
    if len(keys) + len(skipped) != len(plan.keys) or set(keys) | skipped != set(plan.keys):
        return False  # another listing (images added or removed, another part size)
    rows = dict(zip(keys, info.index, strict=True))
    for p, key in zip(plan.paths, plan.keys, strict=True):
        if key in rows:
            if not _fresh(rows[key], p):
                return False
            plan.copy.append((key, rows[key], path))
        else:
            plan.compute.append(p)
    plan.kept = not plan.compute
    plan.retry_only = bool(plan.compute)
    return True


def plan_parts(cache: PackedMaskCache, files, parts, part_size: int) -> list[PartPlan]:
    """Plans of ``parts`` (part numbers) of the sorted listing ``files``."""
    files = [str(f) for f in files]
    cache._load(warn=False)  # the parts written so far: a merge pending is expected here
    plans = []
    for j in parts:
        chunk = files[j * part_size : (j + 1) * part_size]
        plan = PartPlan(j, chunk, [cache.key(p) for p in chunk])
        if _plan_existing(cache, plan):
            plans.append(plan)
            continue
        plan.copy, plan.compute = [], []
        for p, key in zip(plan.paths, plan.keys, strict=True):
            row = cache.lookup(p) if len(cache) else None
            if row is not None:
                try:
                    cache.read_record(row)  # checked now: a damaged record is recomputed
                except CorruptCacheError as err:
                    warnings.warn(f"{err}; recomputing", stacklevel=2)
                    row = None
            if row is None:
                plan.compute.append(p)
            else:
                plan.copy.append((key, row, cache._parts[int(row["part"])][0]))
        plans.append(plan)
    return plans


class PartAssembler:
    """Route computed maps to their parts' writers; commit each part when complete."""

    def __init__(self, cache: PackedMaskCache, plans: list[PartPlan], total_parts: int):
        self.cache, self.total_parts = cache, total_parts
        self._plan = {p: plan for plan in plans for p in plan.compute}
        self._pending = {plan.part: len(plan.compute) for plan in plans}
        self._buffer: dict[int, list] = {plan.part: [] for plan in plans if plan.retry_only}
        self._writers: dict[int, PartWriter] = {}
        self._fds: dict[Path, int] = {}
        self.written: list[int] = []
        self.kept: list[int] = [plan.part for plan in plans if plan.kept]
        self._ready = [plan for plan in plans if not plan.compute and not plan.kept]
        for plan in plans:  # opened now: a source part rewritten later in this run stays readable
            for _, _, src in [] if plan.kept else plan.copy:
                self._source(src)

    def write_ready(self) -> None:
        """Write the parts that need copies only (no image to compute)."""
        for plan in self._ready:
            self._writer(plan)
            self._commit(plan)
        self._ready = []

    def _source(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def _writer(self, plan: PartPlan) -> PartWriter:
        w = self._writers.get(plan.part)
        if w is not None:
            return w
        w = PartWriter(
            self.cache.folder,
            plan.part,
            self.total_parts,
            self.cache.name,
            self.cache.params,
            plan.keys,
        )
        self._writers[plan.part] = w
        for key, row, src in plan.copy:
            data = os.pread(self._source(src), int(row["nbytes"]), int(row["offset"]))
            if zlib.crc32(data) != int(row["crc"]):
                raise CorruptCacheError(f"{src}: changed while this run copied from it")
            w.add(
                Record(
                    key,
                    data,
                    int(row["code"]),
                    int(row["codec"]),
                    int(row["crc"]),
                    int(row["segments"]),
                    int(row["height"]),
                    int(row["width"]),
                    int(row["file_size"]),
                    int(row["mtime_ns"]),
                )
            )
        return w

    def add(self, path: str, status: str, value, rec: Record | None) -> None:
        """One image's result: ``rec`` when stored, else ``status == "skipped"`` and the
        reason in ``value``."""
        plan = self._plan.pop(path)
        key = plan.keys[plan.paths.index(path)] if rec is None else rec.key
        if plan.retry_only:
            self._buffer[plan.part].append((key, value, rec))
        elif rec is not None:
            self._writer(plan).add(rec)
        else:
            self._writer(plan).skip(key, str(value))
        self._pending[plan.part] -= 1
        if not self._pending[plan.part]:
            self._finish(plan)

    def _finish(self, plan: PartPlan) -> None:
        if plan.retry_only:
            results = self._buffer.pop(plan.part)
            if not any(rec is not None for _, _, rec in results):
                self.kept.append(plan.part)  # nothing new: the part file stays as it is
                return
            w = self._writer(plan)
            for key, value, rec in results:
                w.add(rec) if rec is not None else w.skip(key, str(value))
        else:
            self._writer(plan)
        self._commit(plan)

    def _commit(self, plan: PartPlan) -> None:
        self._writers.pop(plan.part).commit()
        self.written.append(plan.part)

    def close(self) -> None:
        """Remove the temporary files of unfinished parts and close the sources."""
        for w in self._writers.values():
            w.abort()
        self._writers = {}
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
