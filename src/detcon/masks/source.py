"""Where a run's region maps come from, parsed once from ``masks.source`` / ``--masks``.

:func:`parse_mask_source` turns the text into one of four typed sources, and everything that
needs the masks (the datasets, ``detcon masks``, ``detcon show``, the config check at load)
dispatches on the type instead of re-reading the string:

* :class:`CacheFolder`: a folder written by ``detcon masks`` (either layout);
* :class:`Generated`: a generator with its parameters (``fh``, ``grid:rows=2``,
  ``slic:n_segments=64``, ``mypkg.regions:make_regions``), computed on the fly;
* :class:`GroundTruth`: COCO instance masks (needs the instances JSON);
* :class:`WholeImage`: one region per image (BYOL, SimCLR, the DetCon ablation).

A text that contains a path separator (or starts with ``.`` / ``~``) is a cache folder and must
exist; anything else must be a generator name, ``coco`` or ``whole``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CacheFolder",
    "Generated",
    "GroundTruth",
    "MaskSource",
    "WholeImage",
    "parse_mask_source",
    "SOURCE_NAMES",
]

#: The names a source can have without parameters (besides import paths and folders).
SOURCE_NAMES = ("fh", "grid", "whole", "slic", "quickshift", "watershed", "coco")


@dataclass(frozen=True)
class CacheFolder:
    """A mask cache folder (per-file or packed layout)."""

    root: Path


@dataclass(frozen=True)
class Generated:
    """Maps computed by a generator, from its spec (name and parameters)."""

    spec: str

    def build(self):
        """The :class:`~detcon.masks.generators.MaskGenerator` (parameters checked)."""
        from detcon.masks.generators import build_generator

        return build_generator(self.spec)


@dataclass(frozen=True)
class GroundTruth:
    """COCO ground-truth instance masks; ``instances_json`` is supplied by the data config."""

    instances_json: Path | None = None


@dataclass(frozen=True)
class WholeImage:
    """One region (id 0) covering each image."""

    def build(self):
        from detcon.masks.generators import WholeImageGenerator

        return WholeImageGenerator()


MaskSource = CacheFolder | Generated | GroundTruth | WholeImage


def _path_like(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith(("~", ".")) or text.endswith(os.sep)


def unknown_source_error(text) -> FileNotFoundError:
    return FileNotFoundError(
        f"masks {str(text)!r} is neither a mask cache folder nor a generator "
        f"({', '.join(SOURCE_NAMES)}, or a function as module.sub:function)"
    )


def parse_mask_source(
    text: str | os.PathLike | None, *, coco_json: str | os.PathLike | None = None
) -> MaskSource:
    """The typed source ``text`` names (see the module docstring). ``None`` is the whole
    image. An existing folder is a cache; a path-like text that is not a folder, or a name that
    is no generator, is a ``FileNotFoundError`` naming both possibilities; bad generator
    parameters are a ``ValueError`` (checked here, at parse time)."""
    from detcon.masks.generators import is_generator_spec

    if text is None:
        return WholeImage()
    if isinstance(text, os.PathLike) or Path(str(text)).is_dir() or _path_like(str(text)):
        root = Path(os.path.expanduser(str(text)))
        if not root.is_dir():
            raise unknown_source_error(text)
        return CacheFolder(root)
    spec = str(text).strip()
    name = spec.partition(":")[0]
    if name == "coco":
        return GroundTruth(Path(coco_json) if coco_json else None)
    if spec == "whole":
        return WholeImage()
    if not is_generator_spec(spec):
        raise unknown_source_error(text)
    source = Generated(spec)
    source.build()  # parameters are checked now, not after the dataset is scanned
    return source
