"""On-disk cache of region maps, one small self-describing file per image.

Layout::

    CACHE/
      cache.json                       # default generator {name, params} (written once, atomically)
      <gen>-<hash8>/                   # one folder per generator + params (hash of both)
        <k[:2]>/<k>.npz                # k = sha1 of the image key (path relative to data_root)

Each ``.npz`` holds ``labels`` (the map, stored as uint8, uint16 or int32 chosen by the largest
id so ids are never truncated) and ``meta`` (JSON: image key, image size ``[H, W]``, file size and
``mtime_ns``, generator name and params, number of segments). Every entry is written to a
temporary file in the same folder, fsynced and ``os.replace``-d into place, so an interrupted
run leaves either a whole entry or none: a rerun resumes where it stopped. The entry files are
the manifest (no separate index can go out of sync); :meth:`MaskCache.entries` lists them.

An entry is *stale* (``get`` returns ``None``) when the image file's size or mtime changed,
or when the generator or its params differ (they live in a different folder).

For folders of hundreds of thousands of images, the packed layout
(:class:`detcon.masks.packed.PackedMaskCache`, ``detcon masks --layout packed``) stores
thousands of maps per file in the same generator folder. :func:`open_cache` opens either.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from detcon.fileio import atomic_write

__all__ = ["MaskCache", "open_cache", "cache_layout", "storage_dtype", "generator_id"]

_INT32_MAX = np.iinfo(np.int32).max


def storage_dtype(max_id: int) -> np.dtype:
    """Smallest unsigned/int32 dtype that holds ids ``0..max_id`` exactly."""
    if max_id < 0 or max_id > _INT32_MAX:
        raise ValueError(f"mask id {max_id} outside [0, {_INT32_MAX}]")
    if max_id <= 255:
        return np.dtype(np.uint8)
    if max_id <= 65535:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def generator_id(name: str, params: dict) -> str:
    """Folder name for a generator: ``<name>-<8 hex of sha1(name, sorted params)>``."""
    blob = json.dumps({"name": name, "params": params}, sort_keys=True)
    return f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def cache_layout(root: str | os.PathLike, generator: Any = None) -> str | None:
    """``"packed"`` or ``"files"``: the layout of a generator's maps in the cache ``root``
    (``generator=None``: the default recorded in ``cache.json``), by what its folder holds;
    for an empty folder, the layout ``cache.json`` records for it; ``None`` when unknown."""
    from detcon.masks.packed import has_parts

    cache = MaskCache(root, generator)
    if has_parts(cache.folder):
        return "packed"
    if cache.folder.is_dir() and any(p.is_dir() for p in cache.folder.iterdir()):
        return "files"
    info = cache.root / "cache.json"
    if info.is_file():
        spec = json.loads(info.read_text())
        if spec.get("folder") == cache.folder.name:
            return spec.get("layout", "files")
    return None


def open_cache(root: str | os.PathLike, generator: Any = None, data_root=None) -> MaskCache:
    """The reader of a mask cache folder, whichever its layout: a :class:`MaskCache`
    (one file per image) or a :class:`~detcon.masks.packed.PackedMaskCache` (a subclass with
    the same ``get`` / ``path`` / ``entries`` API). Arguments as for :class:`MaskCache`."""
    if cache_layout(root, generator) == "packed":
        from detcon.masks.packed import PackedMaskCache

        return PackedMaskCache(root, generator, data_root)
    return MaskCache(root, generator, data_root)


class MaskCache:
    """Region maps keyed by (image, generator name, generator params).

    Args:
        root: cache folder (created on first write).
        generator: the generator whose maps are stored/read (anything with ``name`` and
            ``params``). ``None`` reads the default recorded in ``root/cache.json``.
        data_root: image paths are keyed relative to this folder (so the data folder can be
            moved); ``None`` keys by absolute resolved path.
    """

    layout = "files"

    def __init__(self, root: str | os.PathLike, generator: Any = None, data_root=None):
        self.root = Path(root)
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        if generator is None:
            info = self.root / "cache.json"
            if not info.is_file():
                raise FileNotFoundError(
                    f"{self.root} is not a mask cache (no cache.json); create it with "
                    "`detcon masks DATA --out CACHE` or pass a generator"
                )
            spec = json.loads(info.read_text())
            self.name, self.params = spec["name"], spec["params"]
            if self.data_root is None and spec.get("data_root"):
                self.data_root = Path(spec["data_root"])
        else:
            self.name, self.params = generator.name, dict(generator.params)
        self.folder = self.root / generator_id(self.name, self.params)

    # -- keys ---------------------------------------------------------------------------
    def key(self, image_path: str | os.PathLike) -> str:
        """The stored key of an image: its path relative to ``data_root`` (posix) or absolute."""
        p = Path(image_path).resolve()
        if self.data_root is not None:
            try:
                return p.relative_to(self.data_root).as_posix()
            except ValueError:
                pass
        return p.as_posix()

    def path(self, image_path: str | os.PathLike) -> Path:
        """Entry file of an image (may not exist)."""
        digest = hashlib.sha1(self.key(image_path).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npz"

    def write_info(self) -> None:
        """Record this generator as the cache's default (``cache.json``), atomically."""
        info = {"name": self.name, "params": self.params, "folder": self.folder.name}
        if self.data_root is not None:
            info["data_root"] = str(self.data_root)
        info["layout"] = "files"
        _atomic_write_bytes(self.root / "cache.json", json.dumps(info, indent=1).encode())

    # -- read / write -------------------------------------------------------------------
    @staticmethod
    def _read(entry: Path) -> tuple[np.ndarray, dict] | None:
        try:  # our own handle: np.load leaks its own when the zip is unreadable
            with open(entry, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                return z["labels"], json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # unreadable entry (e.g. disk full earlier): treated as missing

    def get(self, image_path: str | os.PathLike, dtype=np.int32) -> np.ndarray | None:
        """The cached map ``int32 [H, W]`` of an image, or ``None`` if missing or stale.

        ``dtype=None`` returns the stored array (uint8 / uint16 / int32, ids exact) without a
        full-resolution copy: the data loader casts only the cropped views.
        """
        entry = self.path(image_path)
        if not entry.is_file():
            return None
        got = self._read(entry)
        if got is None:
            return None
        labels, meta = got
        try:
            st = os.stat(image_path)
        except OSError:
            return None
        fresh = (
            meta.get("file_size") == st.st_size
            and meta.get("mtime_ns") == st.st_mtime_ns
            and meta.get("generator") == self.name
            and meta.get("params") == self.params
            and list(labels.shape) == meta.get("size")
        )
        if not fresh:
            return None
        return labels if dtype is None else labels.astype(dtype, copy=False)

    def put(self, image_path: str | os.PathLike, labels: np.ndarray) -> Path:
        """Store ``labels`` (integer ``[H, W]``, ids ``0..n-1``) for an image; returns the file."""
        labels = np.asarray(labels)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integer [H, W], got {labels.dtype} {labels.shape}")
        lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
        if lo < 0:
            raise ValueError(f"negative mask id {lo}")
        stored = labels.astype(storage_dtype(hi))
        assert int(stored.max(initial=0)) == hi, "id truncated by storage dtype"
        st = os.stat(image_path)
        meta = {
            "image": self.key(image_path),
            "size": list(labels.shape),
            "file_size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "generator": self.name,
            "params": self.params,
            "num_segments": hi + 1,
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=stored, meta=np.array(json.dumps(meta)))
        entry = self.path(image_path)
        _atomic_write_bytes(entry, buf.getvalue())
        return entry

    def entries(self) -> Iterator[dict]:
        """Metadata of every readable entry of this generator (the manifest)."""
        if not self.folder.is_dir():
            return
        for entry in sorted(self.folder.glob("*/*.npz")):
            if entry.name.startswith("."):  # a temporary file of an interrupted write
                continue
            got = self._read(entry)
            if got is not None:
                yield got[1]

    def remove_stale_temps(self) -> int:
        """Remove the temporary files that writes killed midway left in this generator's
        folder; returns how many. Only when no other process writes to this cache."""
        from detcon.fileio import remove_stale_temps

        if not self.folder.is_dir():
            return 0
        return sum(len(remove_stale_temps(sub)) for sub in self.folder.iterdir() if sub.is_dir())

    def __repr__(self) -> str:
        return f"MaskCache({str(self.root)!r}, generator={self.name}{self.params})"
