"""Train on part of a folder: a list of files or class folders, and a seeded fraction.

``data.subset=FILE`` names what to keep, one entry a line: a path relative to the data folder
(one image, ``n01440764/n01440764_10026.JPEG``) or the name of a top-level folder (all its
images: a class of a class tree, ``n01440764``). Blank lines and ``#`` comments are ignored. A
shipped list is named without a path: ``imagenet100`` (:data:`SHIPPED`).

``data.fraction=F`` then keeps ``round(F * n)`` of the ``n`` images (at least one), drawn
without replacement by a generator seeded with ``train.seed``. With labels (a class tree) the
draw is made per class (``round(F * n_c)``, at least one per class), so the classes keep their
proportions. The kept images are a prefix of one seeded permutation, so for one seed and one
file list a smaller fraction is a subset of a larger one (1% within 10% within 50%). Order of
the result is the folder's sorted order.

Usage::

    entries = read_subset("imagenet100")             # 100 WordNet ids
    keep = select_indices(files, root, entries, fraction=0.1, seed=0, labels=labels)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["SHIPPED", "SubsetError", "read_subset", "select_indices", "subset_file"]

#: Lists shipped with the package: name -> file next to this module.
SHIPPED = {"imagenet100": "imagenet100.txt"}

#: Mixed into the seed so that the subset draw is independent of the other seeded streams.
_STREAM = 0x5B5E7


class SubsetError(FileNotFoundError):
    """A subset file that is missing or names images the folder does not have (one line; a
    ``FileNotFoundError`` so that the command line reports it with exit status 2)."""


def subset_file(name_or_path: str | os.PathLike) -> Path:
    """The file of a shipped list name (``imagenet100``) or a path."""
    text = str(name_or_path)
    if text in SHIPPED:
        return Path(__file__).with_name(SHIPPED[text])
    path = Path(text).expanduser()
    if not path.is_file():
        raise SubsetError(
            f"data.subset {text!r} is neither a file nor a shipped list ({', '.join(SHIPPED)})"
        )
    return path


def read_subset(name_or_path: str | os.PathLike) -> list[str]:
    """Entries of a subset file (stripped, without blanks and ``#`` comments, duplicates
    dropped, order kept), as POSIX paths without a leading ``./``."""
    path = subset_file(name_or_path)
    entries: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip().replace("\\", "/").removeprefix("./").rstrip("/")
        if entry:
            entries[entry] = None
    if not entries:
        raise SubsetError(f"subset file {path} lists nothing")
    return list(entries)


def _match(files: Sequence[Path], root: Path, entries: list[str]) -> list[int]:
    """Indices of ``files`` named by ``entries``; raises naming the entries that match none."""
    index = {f.relative_to(root).as_posix(): i for i, f in enumerate(files)}
    by_top: dict[str, list[int]] = {}
    for rel, i in index.items():
        if "/" in rel:
            by_top.setdefault(rel.split("/", 1)[0], []).append(i)
    keep: set[int] = set()
    unmatched = []
    for entry in entries:
        if entry in index:
            keep.add(index[entry])
        elif entry in by_top:
            keep.update(by_top[entry])
        else:
            unmatched.append(entry)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (
            f" (and {len(unmatched) - 5} more)" * (len(unmatched) > 5)
        )
        raise SubsetError(
            f"{len(unmatched)} of {len(entries)} subset entries match no image under {root}: "
            f"{shown}. Entries are paths relative to the data folder or names of its top-level "
            "folders"
        )
    return sorted(keep)


def _fraction(n: int, fraction: float) -> int:
    return max(1, round(fraction * n))


def select_indices(
    files: Sequence[Path],
    root: str | os.PathLike | None,
    entries: list[str] | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    labels: Sequence[int] | None = None,
) -> list[int]:
    """Sorted indices of ``files`` to keep (see the module docstring).

    Args:
        files: image paths under ``root``, in the dataset's order.
        root: the data folder the entries are relative to.
        entries: from :func:`read_subset`; None keeps every file.
        fraction: in (0, 1]; 1 keeps every (listed) file.
        seed: the draw's seed (``train.seed``).
        labels: one class per file: the fraction is then taken per class.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} files")
    keep = list(range(len(files)))
    if entries is not None:
        if root is None:
            raise ValueError("a subset list needs the data folder its entries are relative to")
        keep = _match(files, Path(root), entries)
    if fraction == 1 or not keep:
        return keep
    groups: dict[int, list[int]] = {}
    for i in keep:
        groups.setdefault(int(labels[i]) if labels is not None else 0, []).append(i)
    chosen: list[int] = []
    for label, members in sorted(groups.items()):
        rng = np.random.default_rng([seed, _STREAM, label])
        order = rng.permutation(len(members))
        chosen += [members[j] for j in order[: _fraction(len(members), fraction)]]
    return sorted(chosen)


def describe(n_before: int, n_after: int, subset: str, fraction: float) -> str:
    """One line for the log: what the subset and fraction kept."""
    parts = [f"subset {subset}"] if subset else []
    if fraction < 1:
        parts.append(f"fraction {fraction:g}")
    return f"{' + '.join(parts)}: {n_after} of {n_before} images"
