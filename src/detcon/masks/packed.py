"""Packed mask cache: thousands of region maps per file, for folders of a million images.

The per-file layout (:class:`~detcon.masks.cache.MaskCache`) writes one small ``.npz`` per
image; for ImageNet's 1.28 M training images that is 1.28 M files, which network filesystems,
backups and ``ls`` handle badly. This layout stores the maps of ``part_size`` consecutive images
(of the sorted folder listing) in one *part* file, next to a merged index over all parts::

    CACHE/<gen>-<hash8>/                 # the same generator folder as the per-file layout
      part-00000.pack ... part-00312.pack  # part j: images j*P .. (j+1)*P - 1 (P = part size)
      manifest.json                        # the parts the merged index was built from
      index-<uid>.npy                      # merged index of all parts, sorted by key hash

A part file is written to a temporary name and renamed when all its images are done, so an
interrupted run leaves whole parts only: a rerun keeps them and redoes the incomplete one.
Part ``j`` depends on the folder listing and ``P`` only, not on ``--shard I --num-shards N``
(machine ``I`` writes the parts with ``j % N == I``), so shards written by separate machines
never collide, and the merge (automatic once every part exists) spans them. Layout::

    b"DCMPACK1"                          # magic
    records                              # each map: zlib-compressed or raw little-endian C-order
    keys JSON                            # the stored images' keys (paths relative to the data root)
    meta JSON                            # generator, params, part, num_parts, skipped images
    index                                # count x INDEX_DTYPE rows, in record order
    footer (80 bytes, FOOTER)            # offsets and lengths, uid, crc32 of meta + index, magic

Every index row carries the crc32 of its record's bytes, checked on each read: a truncated or
damaged part, or an index that no longer matches its parts, raises :class:`CorruptCacheError`
(it never yields a wrong map). The merged index is a plain ``.npy`` opened memory-mapped, so
DataLoader workers share it through the page cache; each process opens part files lazily, on
its first read (file handles are never pickled or shared across ``fork``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from detcon.fileio import atomic_path, atomic_write
from detcon.masks.cache import MaskCache, storage_dtype

__all__ = [
    "PackedMaskCache",
    "PartWriter",
    "Record",
    "CorruptCacheError",
    "encode_map",
    "merge_parts",
    "read_manifest",
    "part_name",
    "part_files",
    "read_part",
    "has_parts",
    "INDEX_DTYPE",
    "DEFAULT_PART_SIZE",
]

MAGIC = b"DCMPACK1"
MAGIC_END = b"DCMPEND1"
VERSION = 1
#: Images per part: ImageNet's 1.28 M training images make 313 parts of ~9 MB (zlib, ~2 KB per map).
DEFAULT_PART_SIZE = 4096
CODECS = {"raw": 0, "zlib": 1}
_CODEC_NAMES = {v: k for k, v in CODECS.items()}
#: storage dtype <-> its code in the index (the item size)
_DTYPES: dict[int, np.dtype] = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<i4")}
_ZLIB_LEVEL = 6  # np.savez_compressed's level; FH maps of 140k px: ~65x smaller, ~1 ms

#: One row per stored map. ``h1, h2``: the first 16 bytes of sha1(key) (the per-file layout's
#: file name), big-endian; ``part``: the part file's number; ``code``: storage dtype item size.
INDEX_DTYPE = np.dtype(
    [
        ("h1", "<u8"),
        ("h2", "<u8"),
        ("part", "<u4"),
        ("code", "u1"),
        ("codec", "u1"),
        ("pad", "<u2"),
        ("offset", "<u8"),
        ("nbytes", "<u8"),
        ("crc", "<u4"),
        ("segments", "<u4"),
        ("height", "<u4"),
        ("width", "<u4"),
        ("file_size", "<u8"),
        ("mtime_ns", "<i8"),
    ]
)
# keys_off, keys_len, meta_off, meta_len, idx_off, count, uid, crc32(meta + index), version, magic
FOOTER = struct.Struct("<QQQQQQ16sII8s")


class CorruptCacheError(ValueError):
    """A part file or the merged index is truncated, damaged or out of date (one line; a
    ``ValueError`` so that the command line reports it as bad input, without a traceback)."""


def part_name(j: int) -> str:
    return f"part-{j:05d}.pack"


def _part_number(name: str) -> int | None:
    stem = name[len("part-") : -len(".pack")]
    return (
        int(stem)
        if name.startswith("part-") and name.endswith(".pack") and stem.isdigit()
        else None
    )


def part_files(folder: str | os.PathLike) -> dict[int, Path]:
    """The complete part files of a generator folder, ``{part number: path}`` (temporary files
    of unfinished parts are hidden names and are not listed)."""
    folder = Path(folder)
    out = {}
    if folder.is_dir():
        for p in folder.glob("part-*.pack"):
            j = _part_number(p.name)
            if j is not None:
                out[j] = p
    return dict(sorted(out.items()))


def has_parts(folder: str | os.PathLike) -> bool:
    """Whether a generator folder holds a packed cache (a manifest or any part file)."""
    folder = Path(folder)
    return (folder / "manifest.json").is_file() or bool(part_files(folder))


def key_hash(key: str) -> tuple[int, int]:
    """``(h1, h2)``: the first 16 bytes of ``sha1(key)`` as two big-endian integers."""
    digest = hashlib.sha1(key.encode()).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big")


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """One encoded map, as a worker process returns it to the writer (picklable)."""

    key: str
    data: bytes
    code: int
    codec: int
    crc: int
    segments: int
    height: int
    width: int
    file_size: int
    mtime_ns: int


def encode_map(key: str, labels: np.ndarray, stat: os.stat_result, codec: str = "zlib") -> Record:
    """Encode ``labels`` (integer ``[H, W]``, ids ``0..n-1``) of the image ``key`` whose file
    has ``stat``: stored as uint8 / uint16 / int32 chosen by the largest id (never truncated)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer [H, W], got {labels.dtype} {labels.shape}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo < 0:
        raise ValueError(f"negative mask id {lo}")
    dtype = storage_dtype(hi).newbyteorder("<")
    stored = np.ascontiguousarray(labels, dtype=dtype)
    assert int(stored.max(initial=0)) == hi, "id truncated by storage dtype"
    data = stored.tobytes()
    if codec == "zlib":
        data = zlib.compress(data, _ZLIB_LEVEL)
    return Record(
        key,
        data,
        dtype.itemsize,
        CODECS[codec],
        zlib.crc32(data),
        hi + 1,
        labels.shape[0],
        labels.shape[1],
        int(stat.st_size),
        int(stat.st_mtime_ns),
    )


def decode(row, data: bytes) -> np.ndarray:
    """The map ``[H, W]`` (stored dtype, writable) of an index row and its record bytes."""
    dtype = _DTYPES[int(row["code"])]
    shape = (int(row["height"]), int(row["width"]))
    if int(row["codec"]) == CODECS["zlib"]:
        data = zlib.decompress(data)
    arr = np.frombuffer(data, dtype=dtype)
    if arr.size != shape[0] * shape[1]:
        raise ValueError(f"record holds {arr.size} values for a {shape} map")
    return arr.reshape(shape).copy()


# --------------------------------------------------------------------------- writing
class PartWriter:
    """Write one part file: records are appended to a temporary file as they come; ``commit``
    adds keys, meta, index and footer, fsyncs and renames it into place; ``abort`` removes it.

    ``attempted``: the keys of every image of the part (stored or skipped), so that a rerun can
    tell a complete part of the same listing from one of another listing.
    """

    def __init__(self, folder, part: int, num_parts: int, name: str, params: dict, attempted):
        self.path = Path(folder) / part_name(part)
        self.part, self.num_parts = int(part), int(num_parts)
        self.name, self.params = name, dict(params)
        self.attempted = list(attempted)
        self._cm = atomic_path(self.path)
        self.tmp = self._cm.__enter__()
        self._f = open(self.tmp, "wb")
        self._f.write(MAGIC)
        self._rows: list[tuple] = []
        self._keys: list[str] = []
        self.skipped: list[tuple[str, str]] = []

    def add(self, rec: Record) -> None:
        offset = self._f.tell()
        self._f.write(rec.data)
        h1, h2 = key_hash(rec.key)
        self._rows.append(
            (
                h1,
                h2,
                self.part,
                rec.code,
                rec.codec,
                0,
                offset,
                len(rec.data),
                rec.crc,
                rec.segments,
                rec.height,
                rec.width,
                rec.file_size,
                rec.mtime_ns,
            )
        )
        self._keys.append(rec.key)

    def skip(self, key: str, reason: str) -> None:
        self.skipped.append((key, reason))

    def __len__(self) -> int:
        return len(self._rows)

    def commit(self) -> Path:
        if len(self._keys) + len(self.skipped) != len(self.attempted):
            self.abort()
            raise ValueError(
                f"{self.path.name}: {len(self._keys)} maps + {len(self.skipped)} skipped for "
                f"{len(self.attempted)} images: not committed"
            )
        f = self._f
        keys = json.dumps(self._keys).encode()
        keys_off = f.tell()
        f.write(keys)
        uid = uuid.uuid4().bytes
        meta = {
            "format": VERSION,
            "generator": self.name,
            "params": self.params,
            "part": self.part,
            "num_parts": self.num_parts,
            "attempted": len(self.attempted),
            "keys_crc": zlib.crc32(keys),
            "skipped": self.skipped,
        }
        meta_b = json.dumps(meta).encode()
        meta_off = f.tell()
        f.write(meta_b)
        index = np.array(self._rows, dtype=INDEX_DTYPE)
        idx_off = f.tell()
        idx_b = index.tobytes()
        f.write(idx_b)
        crc = zlib.crc32(idx_b, zlib.crc32(meta_b))
        f.write(
            FOOTER.pack(
                keys_off,
                len(keys),
                meta_off,
                len(meta_b),
                idx_off,
                len(index),
                uid,
                crc,
                VERSION,
                MAGIC_END,
            )
        )
        f.close()
        self._cm.__exit__(None, None, None)  # fsync + rename
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        err = RuntimeError("part not completed")
        self._cm.__exit__(type(err), err, None)  # removes the temporary file


# --------------------------------------------------------------------------- reading parts
@dataclass
class PartInfo:
    """What a part file's footer, meta and index say (``keys`` only when asked for)."""

    path: Path
    uid: bytes
    meta: dict
    index: np.ndarray
    size: int
    mtime_ns: int
    keys: list[str] | None = None

    def key_list(self) -> list[str]:
        """The keys, which ``read_part(..., keys=True)`` reads."""
        if self.keys is None:
            raise ValueError(f"{self.path}: keys not read (read_part(..., keys=True))")
        return self.keys


def _read_footer(fd: int, path: Path, size: int) -> tuple:
    if size < len(MAGIC) + FOOTER.size:
        raise CorruptCacheError(f"{path}: truncated part file ({size} bytes)")
    tail = os.pread(fd, FOOTER.size, size - FOOTER.size)
    fields = FOOTER.unpack(tail)
    if fields[-1] != MAGIC_END or os.pread(fd, len(MAGIC), 0) != MAGIC:
        raise CorruptCacheError(f"{path}: not a complete part file (truncated or damaged)")
    return fields


def read_part(path: str | os.PathLike, keys: bool = False) -> PartInfo:
    """Footer, meta and index of a part file (checked against their crc32); ``keys=True`` also
    reads the stored keys. Raises :class:`CorruptCacheError` on a truncated or damaged file."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        keys_off, keys_len, meta_off, meta_len, idx_off, count, uid, crc, version, _ = _read_footer(
            fd, path, st.st_size
        )
        if version != VERSION:
            raise CorruptCacheError(f"{path}: part format {version}, this detcon reads {VERSION}")
        end = idx_off + count * INDEX_DTYPE.itemsize
        if not (keys_off + keys_len <= meta_off and meta_off + meta_len <= idx_off):
            raise CorruptCacheError(f"{path}: inconsistent footer")
        if end != st.st_size - FOOTER.size:
            raise CorruptCacheError(f"{path}: inconsistent footer")
        blob = os.pread(fd, end - meta_off, meta_off)
        if zlib.crc32(blob) != crc:
            raise CorruptCacheError(f"{path}: index checksum mismatch (damaged file)")
        meta = json.loads(blob[:meta_len])
        number = _part_number(path.name)
        if number is not None and number != meta["part"]:
            raise CorruptCacheError(f"{path}: holds part {meta['part']} (renamed?)")
        index = np.frombuffer(blob[idx_off - meta_off :], dtype=INDEX_DTYPE).copy()
        info = PartInfo(path, uid, meta, index, st.st_size, st.st_mtime_ns)
        if keys:
            raw = os.pread(fd, keys_len, keys_off)
            if zlib.crc32(raw) != meta["keys_crc"]:
                raise CorruptCacheError(f"{path}: keys checksum mismatch (damaged file)")
            info.keys = json.loads(raw)
            if len(info.keys) != count:
                raise CorruptCacheError(f"{path}: {len(info.keys)} keys for {count} records")
        return info
    finally:
        os.close(fd)


def _sorted_index(indexes: list[np.ndarray]) -> np.ndarray:
    index = np.concatenate(indexes) if indexes else np.zeros(0, INDEX_DTYPE)
    order = np.lexsort((index["h2"], index["h1"]))
    return index[order]


def merge_parts(folder: str | os.PathLike, num_parts: int | None = None) -> dict:
    """Write the merged index and ``manifest.json`` of a generator folder from its part files.

    ``num_parts``: the parts the listing has (default: what the parts record); every part
    ``0..num_parts-1`` must exist, else ``FileNotFoundError`` names the missing ones. Parts
    numbered ``>= num_parts`` (left by a larger listing) are left out. Returns the manifest.
    Safe to run while readers use the cache (new files, then an atomic rename of the manifest).
    """
    folder = Path(folder)
    files = part_files(folder)
    infos = []
    for p in files.values():
        try:
            infos.append(read_part(p))
        except CorruptCacheError as err:
            raise CorruptCacheError(
                f"{err}; rerun `detcon masks` for the shard that writes it (it is redone)"
            ) from None
    if num_parts is None:
        counts = {int(i.meta["num_parts"]) for i in infos}
        if len(counts) > 1:
            raise CorruptCacheError(
                f"{folder}: parts from listings of {sorted(counts)} parts; rerun `detcon masks` "
                "on the current folder"
            )
        num_parts = counts.pop() if counts else 0
    missing = [j for j in range(num_parts) if j not in files]
    if missing:
        shown = ", ".join(part_name(j) for j in missing[:5])
        raise FileNotFoundError(
            f"{folder}: {len(missing)} of {num_parts} parts missing ({shown}"
            f"{', ...' if len(missing) > 5 else ''}): a shard still running or not started?"
        )
    infos = [i for i in infos if int(i.meta["part"]) < num_parts]
    other = [i.path.name for i in infos if int(i.meta["num_parts"]) != num_parts]
    if other:
        raise FileNotFoundError(
            f"{folder}: {len(other)} part(s) written for a listing of another length "
            f"({', '.join(other[:5])}): rerun their shards on the current folder"
        )
    gens = {(i.meta["generator"], json.dumps(i.meta["params"], sort_keys=True)) for i in infos}
    if len(gens) > 1:
        raise CorruptCacheError(f"{folder}: parts of different generators {sorted(gens)}")
    index = _sorted_index([i.index for i in infos])
    uid = uuid.uuid4().hex[:12]
    index_name = f"index-{uid}.npy"
    with atomic_path(folder / index_name) as tmp:
        np.save(tmp, index)
    manifest = {
        "format": VERSION,
        "index": index_name,
        "entries": int(len(index)),
        "num_parts": num_parts,
        "generator": infos[0].meta["generator"] if infos else None,
        "params": infos[0].meta["params"] if infos else None,
        "parts": [
            {"name": i.path.name, "size": i.size, "mtime_ns": i.mtime_ns, "uid": i.uid.hex()}
            for i in infos
        ],
    }
    with atomic_write(folder / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    for old in folder.glob("index-*.npy"):  # earlier merges (readers that hold one keep it)
        if old.name != index_name:
            old.unlink(missing_ok=True)
    return manifest


def manifest_is_current(manifest: dict, files: dict[int, Path]) -> bool:
    """Whether a manifest lists exactly the part files ``0..num_parts-1`` on disk, with the
    sizes and mtimes they have now (a part rewritten since has another mtime)."""
    listed = {p["name"]: p for p in manifest["parts"]}
    on_disk = {p.name: p.stat() for j, p in files.items() if j < int(manifest["num_parts"])}
    return set(listed) == set(on_disk) and all(
        on_disk[n].st_size == p["size"] and on_disk[n].st_mtime_ns == p["mtime_ns"]
        for n, p in listed.items()
    )


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's ``manifest.json`` if it is readable and current, else ``None``."""
    path = Path(folder) / "manifest.json"
    try:
        man = json.loads(path.read_text())
        return man if manifest_is_current(man, part_files(folder)) else None
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- the reader
class PackedMaskCache(MaskCache):
    """Read a packed cache with the :class:`MaskCache` API (``get``, ``path``, ``entries``,
    ``key``): datasets read it transparently. Same arguments as :class:`MaskCache`.

    The index is loaded on first use in each process: the merged index memory-mapped when
    ``manifest.json`` matches the part files on disk, else (a merge pending, or a part
    rewritten since) built from the parts' own indexes, with one warning. A map's entry is
    fresh under the same rules as the per-file layout (image size and mtime, generator and
    params). Maps are written by ``detcon masks --layout packed`` (:class:`PartWriter`), not
    by ``put``.
    """

    layout = "packed"

    def __init__(self, root, generator=None, data_root=None):
        super().__init__(root, generator, data_root)
        self._reset()
        self._warned = False

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._index: np.ndarray | None = None
        self._h1: np.ndarray | None = None
        self._parts: dict[int, tuple[Path, bytes]] = {}  # number -> (path, uid expected)
        self._fds: dict[int, int] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # no index, no file handles: each process opens its own
        state.update(_index=None, _h1=None, _parts={}, _fds={}, _pid=None)
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked without pickling: drop the parent's handles
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds = {}
            self._pid = os.getpid()

    # -- index --------------------------------------------------------------------------
    def _load(self, warn: bool = True) -> np.ndarray:
        if self._index is not None:
            return self._index
        files = part_files(self.folder)
        index = self._load_manifest(files, warn)
        if index is None:
            infos = []
            for p in files.values():
                try:
                    info = read_part(p)
                except CorruptCacheError:
                    if warn:
                        raise
                    continue  # a writer's view: a damaged part is redone or reported later
                if (info.meta["generator"], info.meta["params"]) != (self.name, self.params):
                    raise CorruptCacheError(
                        f"{p}: written by {info.meta['generator']}{info.meta['params']}, "
                        f"not {self.name}{self.params}"
                    )
                infos.append(info)
            self._parts = {int(i.meta["part"]): (i.path, i.uid) for i in infos}
            index = _sorted_index([i.index for i in infos])
        self._index = index
        self._h1 = np.ascontiguousarray(index["h1"])
        return index

    def _load_manifest(self, files: dict[int, Path], warn: bool) -> np.ndarray | None:
        man_path = self.folder / "manifest.json"
        if not man_path.is_file():
            if files and warn:
                self._warn(f"{self.folder}: no merged index yet; reading the parts' indexes")
            return None
        try:
            man = json.loads(man_path.read_text())
            if not manifest_is_current(man, files):
                if warn:
                    self._warn(
                        f"{self.folder}: the merged index is out of date (parts written since); "
                        "reading the parts' indexes (run `detcon masks DATA --out CACHE --merge`)"
                    )
                return None
            index = np.load(self.folder / man["index"], mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError) as err:
            self._warn(f"{self.folder}: unreadable merged index ({err}); reading the parts")
            return None
        if index.dtype != INDEX_DTYPE or len(index) != man["entries"]:
            raise CorruptCacheError(f"{self.folder / man['index']}: not a mask index")
        if (man["generator"], man["params"]) != (self.name, self.params) and len(index):
            raise CorruptCacheError(
                f"{man_path}: written by {man['generator']}{man['params']}, "
                f"not {self.name}{self.params}"
            )
        self._parts = {
            cast(int, _part_number(p["name"])): (self.folder / p["name"], bytes.fromhex(p["uid"]))
            for p in man["parts"]
        }
        return index

    def _warn(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(text, stacklevel=4)

    def __len__(self) -> int:
        return len(self._load())

    def _rows(self, image_path) -> np.ndarray:
        """Index rows whose key hash is the image's (normally one; none when absent)."""
        index = self._load()
        h1, h2 = key_hash(self.key(image_path))
        h1s = cast(np.ndarray, self._h1)  # set by _load()
        lo = int(np.searchsorted(h1s, h1, side="left"))
        hi = int(np.searchsorted(h1s, h1, side="right"))
        rows = index[lo:hi]
        return rows[rows["h2"] == h2]

    # -- records ------------------------------------------------------------------------
    def _fd(self, part: int) -> int:
        self._check_process()
        fd = self._fds.get(part)
        if fd is not None:
            return fd
        if part not in self._parts:
            raise CorruptCacheError(f"{self.folder}: the index names part {part}, not on disk")
        path, uid = self._parts[part]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptCacheError(
                f"{path}: missing (removed after the index was loaded?)"
            ) from None
        try:
            found = _read_footer(fd, path, os.fstat(fd).st_size)[6]
        except BaseException:
            os.close(fd)
            raise
        if found != uid:
            os.close(fd)
            raise CorruptCacheError(
                f"{path}: rewritten after the merged index was built; reopen the cache or run "
                "`detcon masks DATA --out CACHE --merge`"
            )
        self._fds[part] = fd
        return fd

    def read_record(self, row) -> bytes:
        """The stored bytes of an index row, checked against its crc32."""
        part, nbytes = int(row["part"]), int(row["nbytes"])
        data = os.pread(self._fd(part), nbytes, int(row["offset"]))
        if len(data) != nbytes or zlib.crc32(data) != int(row["crc"]):
            raise CorruptCacheError(
                f"{self._parts[part][0]}: record at byte {int(row['offset'])} fails its "
                "checksum (damaged file); delete the part and rerun `detcon masks` to redo it"
            )
        return data

    def lookup(self, image_path, stat: os.stat_result | None = None):
        """The fresh index row of an image (``None`` if missing or stale)."""
        rows = self._rows(image_path)
        if not len(rows):
            return None
        if stat is None:
            try:
                stat = os.stat(image_path)
            except OSError:
                return None
        for row in rows:
            if int(row["file_size"]) == stat.st_size and int(row["mtime_ns"]) == stat.st_mtime_ns:
                return row
        return None

    def get(self, image_path: str | os.PathLike, dtype=np.int32) -> np.ndarray | None:
        """The cached map ``int32 [H, W]`` of an image, or ``None`` if missing or stale;
        ``dtype=None`` returns the stored dtype. A damaged record raises
        :class:`CorruptCacheError`."""
        row = self.lookup(image_path)
        if row is None:
            return None
        try:
            labels = decode(row, self.read_record(row))
        except (ValueError, zlib.error) as err:
            raise CorruptCacheError(
                f"{self._parts[int(row['part'])][0]}: undecodable record ({err})"
            ) from None
        return labels if dtype is None else labels.astype(dtype, copy=False)

    def path(self, image_path: str | os.PathLike) -> Path:
        """The part file that holds the image's entry, or a path that does not exist when no
        part does (so ``cache.path(p).is_file()`` tells whether an entry exists)."""
        rows = self._rows(image_path)
        if len(rows):
            return self._parts[int(rows[0]["part"])][0]
        digest = hashlib.sha1(self.key(image_path).encode()).hexdigest()
        return self.folder / "missing" / digest

    def put(self, image_path, labels):
        raise TypeError(
            "a packed mask cache is written part by part (`detcon masks --layout packed`, "
            "detcon.masks.packed.PartWriter), not one map at a time"
        )

    def entries(self) -> Iterator[dict]:
        """Metadata of every entry, part by part (reads each part's keys)."""
        for p in part_files(self.folder).values():
            info = read_part(p, keys=True)
            for key, row in zip(info.key_list(), info.index, strict=True):
                yield {
                    "image": key,
                    "size": [int(row["height"]), int(row["width"])],
                    "file_size": int(row["file_size"]),
                    "mtime_ns": int(row["mtime_ns"]),
                    "generator": info.meta["generator"],
                    "params": info.meta["params"],
                    "num_segments": int(row["segments"]),
                    "part": int(row["part"]),
                }

    def write_info(self, part_size: int = DEFAULT_PART_SIZE, codec: str = "zlib") -> None:
        """Record this generator (and the packed layout) as the cache's default."""
        info = {"name": self.name, "params": self.params, "folder": self.folder.name}
        if self.data_root is not None:
            info["data_root"] = str(self.data_root)
        info.update(layout="packed", part_size=int(part_size), codec=codec)
        with atomic_write(self.root / "cache.json", "w") as f:
            f.write(json.dumps(info, indent=1))

    def remove_stale_temps(self) -> int:
        from detcon.fileio import remove_stale_temps

        return len(remove_stale_temps(self.folder))

    def reload(self) -> None:
        """Forget the loaded index and close the part files: the next read sees the parts
        written since."""
        self.close()
        self._reset()

    def close(self) -> None:
        """Close this process's part files (reopened on the next read)."""
        self._check_process()
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        try:
            if getattr(self, "_pid", None) == os.getpid():
                for fd in self._fds.values():
                    os.close(fd)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"PackedMaskCache({str(self.root)!r}, generator={self.name}{self.params})"
