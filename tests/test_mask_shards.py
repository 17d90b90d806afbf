"""Packed mask cache: round trips against the per-file layout, part-wise resume, shards merged,
damaged parts, and reading through the datasets (also from DataLoader workers)."""

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detcon.commands import masks as masks_command
from detcon.commands.masks import generate_masks, generate_packed
from detcon.data.datasets import ImageFolderDataset, MaskCoverageError, resolve_masks
from detcon.masks.cache import MaskCache, open_cache
from detcon.masks.generators import CallableGenerator, GridGenerator
from detcon.masks.packed import (
    INDEX_DTYPE,
    CorruptCacheError,
    PackedMaskCache,
    PartWriter,
    encode_map,
    merge_parts,
    part_files,
    read_part,
)


def _images(folder, n=7, size=(20, 28)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.zeros((*size, 3), dtype=np.uint8)
        arr[:, : 3 + i] = (250, 30 * i % 256, 10)  # a region whose width depends on i
        arr[size[0] // 2 :, :, 2] = 200
        path = folder / f"im{i:02d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def _thresh(image):
    """A generator from the definition: region id = 2 * (red > 128) + (blue > 128)."""
    return 2 * (image[..., 0] > 128).astype(np.int32) + (image[..., 2] > 128)


def _gen(counter=None):
    def fn(image):
        if counter is not None:
            counter.append(1)
        return _thresh(image)

    return CallableGenerator(fn, "thresh", {"t": 128})


def _ref(path):
    labels = _thresh(np.asarray(Image.open(path).convert("RGB")))
    _, inv = np.unique(labels, return_inverse=True)  # the generator's contiguous relabelling
    return inv.reshape(labels.shape)


def test_packed_and_per_file_layouts_hold_the_same_maps(tmp_path):
    paths = _images(tmp_path / "img")
    gen = _gen()
    files = MaskCache(tmp_path / "files", gen, data_root=tmp_path / "img")
    generate_masks(paths, gen, files, progress=False)
    packed = PackedMaskCache(tmp_path / "packed", gen, data_root=tmp_path / "img")
    stats = generate_packed(paths, gen, packed, part_size=3, progress=False)
    assert stats.computed == 7 and stats.parts_written == 3  # 3 + 3 + 1 images
    merge_parts(packed.folder)
    again = PackedMaskCache(tmp_path / "packed", gen, data_root=tmp_path / "img")
    for p in paths:
        got, ref = again.get(p), files.get(p)
        assert got.dtype == np.int32 and np.array_equal(got, ref)
        assert np.array_equal(got, _ref(p))
        assert again.get(p, dtype=None).dtype == np.uint8  # stored compactly
    assert [e["image"] for e in again.entries()] == [p.name for p in paths]
    assert type(open_cache(tmp_path / "files", gen)) is MaskCache  # each layout's reader
    assert type(open_cache(tmp_path / "packed", gen)) is PackedMaskCache
    assert len(list(packed.folder.iterdir())) == 5  # 3 parts, index, manifest: not 7 files


@pytest.mark.parametrize("codec", ["zlib", "raw"])
@pytest.mark.parametrize("max_id", [3, 300, 70_000])
def test_record_round_trip_keeps_large_ids(tmp_path, codec, max_id):
    (path,) = _images(tmp_path / "img", n=1, size=(300, 300))
    labels = (np.arange(90_000).reshape(300, 300) % (max_id + 1)).astype(np.int64)
    cache = PackedMaskCache(tmp_path / "c", GridGenerator(), data_root=tmp_path / "img")
    w = PartWriter(cache.folder, 0, 1, cache.name, cache.params, ["im00.png"])
    w.add(encode_map("im00.png", labels, os.stat(path), codec))
    w.commit()
    merge_parts(cache.folder)
    row = read_part(w.path).index[0]
    assert row["code"] == {3: 1, 300: 2, 70_000: 4}[max_id] and row["segments"] == max_id + 1
    got = cache.get(path)
    assert got.dtype == np.int32 and got.max() == max_id and np.array_equal(got, labels)
    assert INDEX_DTYPE.itemsize == 72


def test_stale_image_and_other_params_read_as_missing(tmp_path):
    (path,) = _images(tmp_path / "img", n=1)
    gen = _gen()
    cache = PackedMaskCache(tmp_path / "c", gen)
    generate_packed([path], gen, cache, progress=False)
    merge_parts(cache.folder)
    assert PackedMaskCache(tmp_path / "c", gen).get(path) is not None
    other = CallableGenerator(_thresh, "thresh", {"t": 100})
    assert PackedMaskCache(tmp_path / "c", other).get(path) is None  # another folder
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # image "edited"
    assert PackedMaskCache(tmp_path / "c", gen).get(path) is None


class _Interrupt(BaseException):
    pass


def test_interrupted_part_is_redone_complete_parts_kept(tmp_path):
    paths = _images(tmp_path / "img", n=8)
    calls = []

    def flaky(image):
        if len(calls) == 4:
            raise _Interrupt  # dies on the 5th image: part 0 (3 images) done, part 1 not
        calls.append(1)
        return _thresh(image)

    gen = CallableGenerator(flaky, "thresh", {"t": 128})
    cache = PackedMaskCache(tmp_path / "c", gen)
    with pytest.raises(_Interrupt):
        generate_packed(paths, gen, cache, part_size=3, progress=False)
    assert sorted(part_files(cache.folder)) == [0]
    assert not [p for p in cache.folder.iterdir() if p.name.startswith(".")]  # no temp left
    done = (cache.folder / "part-00000.pack").stat().st_mtime_ns

    count = []
    stats = generate_packed(paths, _gen(count), cache, part_size=3, progress=False)
    assert len(count) == 5 and stats.computed == 5 and stats.reused == 3
    assert stats.parts_kept == 1 and stats.parts_written == 2
    assert (cache.folder / "part-00000.pack").stat().st_mtime_ns == done  # untouched
    fresh = PackedMaskCache(tmp_path / "c", gen)
    with pytest.warns(UserWarning, match="no merged index"):
        assert all(np.array_equal(fresh.get(p), _ref(p)) for p in paths)


def test_added_image_shifts_parts_and_reuses_entries(tmp_path):
    paths = _images(tmp_path / "img", n=5)
    cache = PackedMaskCache(tmp_path / "c", _gen())
    generate_packed(paths, _gen(), cache, part_size=2, progress=False)
    merge_parts(cache.folder)
    new = tmp_path / "img" / "im00a.png"  # sorts second: every later image moves
    Image.open(paths[1]).save(new)
    listing = sorted([*paths, new])
    count = []
    cache = PackedMaskCache(tmp_path / "c", _gen())
    stats = generate_packed(listing, _gen(count), cache, part_size=2, progress=False)
    assert len(count) == 1 and stats.reused == 5 and stats.parts_written == 3
    merge_parts(cache.folder)
    reread = PackedMaskCache(tmp_path / "c", _gen())
    assert all(np.array_equal(reread.get(p), _ref(p)) for p in listing)


def test_per_file_cache_is_converted_without_recomputing(tmp_path):
    paths = _images(tmp_path / "img", n=4)
    generate_masks(paths, _gen(), MaskCache(tmp_path / "c", _gen()), progress=False)
    count = []
    stats = generate_packed(
        paths, _gen(count), PackedMaskCache(tmp_path / "c", _gen()), progress=False
    )
    assert not count and stats.reused == 4 and stats.computed == 0


def main(argv):
    """``detcon masks ...`` (the masks command's own parser)."""
    import argparse

    parser = argparse.ArgumentParser()
    masks_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _cli(data, out, *extra):
    args = ["masks", str(data), "--out", str(out), "--quiet", "--method", "grid", "--grid", "2"]
    return main([*args, "--layout", "packed", "--part-size", "2", *extra])


def test_shards_of_two_runs_are_merged_and_read_as_one(tmp_path, capsys):
    paths = _images(tmp_path / "data", n=7)
    out = tmp_path / "cache"
    assert _cli(tmp_path / "data", out, "--shard", "1", "--num-shards", "2", "--workers", "2") == 0
    text = capsys.readouterr().out
    assert "2 of 4 parts" in text and "not merged yet" in text and "part-00000.pack" in text
    assert _cli(tmp_path / "data", out, "--merge") == 1  # parts 0 and 2 missing
    capsys.readouterr()
    assert _cli(tmp_path / "data", out, "--shard", "0", "--num-shards", "2", "--workers", "1") == 0
    assert "merged index: 7 maps in 4 parts" in capsys.readouterr().out
    cache = open_cache(out)
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    assert [p["name"] for p in manifest["parts"]] == [f"part-{j:05d}.pack" for j in range(4)]
    assert isinstance(cache, PackedMaskCache) and len(cache) == 7
    grid = GridGenerator(2)
    for p in paths:
        assert np.array_equal(cache.get(p), grid(np.asarray(Image.open(p).convert("RGB"))))
    assert _cli(tmp_path / "data", out) == 0  # everything kept, index not rewritten
    assert "kept: 4" in (text := capsys.readouterr().out) and "up to date" in text
    plain = ["masks", str(tmp_path / "data"), "--out", str(out), "--method", "grid", "--grid", "2"]
    assert main([*plain, "--quiet"]) == 0  # no --layout: the cache's own (packed) layout
    text = capsys.readouterr().out  # the recorded part size (2), not the default
    assert "4 of 4 parts of 2 images" in text and "kept: 4" in text
    with pytest.raises(SystemExit, match="packed cache"):
        main([*plain, "--layout", "files"])


def test_damaged_parts_raise_and_are_redone(tmp_path, capsys):
    paths = _images(tmp_path / "data", n=4)
    out = tmp_path / "cache"
    assert _cli(tmp_path / "data", out, "--workers", "1") == 0
    folder = open_cache(out).folder
    part = folder / "part-00000.pack"
    row = read_part(part).index[0]
    blob = bytearray(part.read_bytes())
    blob[int(row["offset"])] ^= 0xFF  # one flipped bit pattern in the first record
    part.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="out of date"):  # the part's mtime changed
        with pytest.raises(CorruptCacheError, match="checksum"):
            open_cache(out).get(paths[0])
    part.write_bytes(bytes(blob[: len(blob) // 2]))  # truncated
    with pytest.warns(UserWarning, match="out of date"):
        with pytest.raises(CorruptCacheError, match="not a complete part file"):
            open_cache(out).get(paths[0])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="redoing this part"):
        assert _cli(tmp_path / "data", out, "--workers", "1") == 0
    assert "computed: 2  reused: 2" in capsys.readouterr().out
    grid = GridGenerator(2)
    cache = open_cache(out)
    assert np.array_equal(
        cache.get(paths[0]), grid(np.asarray(Image.open(paths[0]).convert("RGB")))
    )


def test_killed_run_temp_file_is_removed(tmp_path, capsys):
    _images(tmp_path / "data", n=2)
    out = tmp_path / "cache"
    assert _cli(tmp_path / "data", out, "--workers", "1") == 0
    folder = open_cache(out).folder
    (folder / ".part-00000.pack.abcd1234.tmp.pack").write_bytes(b"half")  # a SIGKILLed write
    capsys.readouterr()
    assert _cli(tmp_path / "data", out, "--workers", "1") == 0
    assert "removed 1 temporary file" in capsys.readouterr().out
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def _constant_cache(tmp_path, n=4):
    """A packed cache under the grid generator's key whose maps are all 0 (one region), so
    that a map read from it differs from the grid map a fallback would compute."""
    root = tmp_path / "data"
    paths = _images(root, n=n, size=(40, 48))
    zero = CallableGenerator(
        lambda im: np.zeros(im.shape[:2], np.int32), "grid", GridGenerator(2).params
    )
    cache = PackedMaskCache(tmp_path / "cache", zero, data_root=root)
    cache.write_info()
    generate_packed(paths, zero, cache, part_size=3, progress=False)
    merge_parts(cache.folder)
    return root, paths


def test_datasets_read_packed_cache_through_resolve_masks(tmp_path):
    root, paths = _constant_cache(tmp_path)
    cache, gen = resolve_masks(str(tmp_path / "cache"), data_root=root)
    assert isinstance(cache, PackedMaskCache) and gen.name == "grid"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "computing it" warning: every map comes from the cache
        ds = ImageFolderDataset(
            root, masks=str(tmp_path / "cache"), image_size=16, compute_missing=False
        )
        for i in range(len(paths)):
            image, labels = ds.load(i)
            assert labels.shape == (image.height, image.width) and labels.max() == 0
    Image.open(paths[0]).save(root / "new.png")  # an image without an entry
    with pytest.raises(MaskCoverageError, match="no entry for 1 of 5"):
        ImageFolderDataset(
            root, masks=str(tmp_path / "cache"), image_size=16, compute_missing=False
        )


def test_dataloader_workers_read_packed_cache(tmp_path):
    root, paths = _constant_cache(tmp_path, n=6)
    ds = ImageFolderDataset(
        root, masks=str(tmp_path / "cache"), image_size=16, compute_missing=False
    )
    ds.cache.get(paths[0])  # the main process has opened a part file and loaded the index
    state = pickle.loads(pickle.dumps(ds.cache))
    assert state._fds == {} and state._index is None  # nothing pickled across processes
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 6
    for b in batches:
        assert b["mask_a"].shape == (3, 16, 16) and int(b["mask_a"].max()) == 0
        assert int(b["mask_b"].max()) == 0  # from the cache, not the grid fallback
